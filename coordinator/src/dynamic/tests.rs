use std::collections::BTreeMap;

use super::*;

fn lib(files: &[(&str, &str)]) -> Library {
    let files: BTreeMap<String, String> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    Library::from_texts(&files).unwrap()
}

fn all(text: &str, library: &Library) -> Vec<String> {
    let c = Compiled::new(&parse(text).unwrap(), library);
    (0..c.count()).map(|i| c.nth(i).text).collect()
}

fn combos(text: &str) -> Vec<String> {
    all(text, &Library::default())
}

impl Library {
    /// Every file of `files` parsed (test helper: no references to follow).
    fn from_texts(files: &BTreeMap<String, String>) -> Result<Library> {
        let names: Vec<Template> = files
            .keys()
            .map(|n| Template {
                parts: vec![Part::Wildcard(n.clone())],
            })
            .collect();
        let refs: Vec<&Template> = names.iter().collect();
        Library::gather(
            &refs,
            &|| files.keys().cloned().collect(),
            &mut |n| files.get(n).cloned(),
            &|n| format!("{n}.txt not in the test set"),
        )
    }
}

#[test]
fn plain_text_is_one_combination() {
    let t = parse("a photo of a cat, (best:1.2), [a|b]").unwrap();
    assert!(t.is_plain());
    assert_eq!(
        combos("a photo of a cat, (best:1.2), [a|b]"),
        ["a photo of a cat, (best:1.2), [a|b]"]
    );
}

#[test]
fn variants_enumerate_last_fastest() {
    assert_eq!(
        combos("{a|b} {c|d}"),
        ["a c", "a d", "b c", "b d"],
        "itertools.product order"
    );
    assert_eq!(combos("x{|y}"), ["x", "xy"]);
}

#[test]
fn multi_pick_uses_combinations_and_joiners() {
    assert_eq!(combos("{2$$a|b|c}"), ["a, b", "a, c", "b, c"]);
    assert_eq!(
        combos("{1-2$$a|b|c}"),
        ["a", "b", "c", "a, b", "a, c", "b, c"]
    );
    assert_eq!(
        combos("{2$$ and $$a|b|c}"),
        ["a and b", "a and c", "b and c"]
    );
    assert_eq!(combos("{-2$$a|b}"), ["a", "b", "a, b"]);
    assert_eq!(combos("{2-$$a|b|c}").len(), 3 + 1);
    // A count above the number of options picks them all, as sd-dynamic-prompts does.
    assert_eq!(combos("{5$$a|b}"), ["a, b"]);
}

#[test]
fn nesting_counts_each_inner_combination() {
    assert_eq!(
        combos("{a {x|y}|b}"),
        ["a x", "a y", "b"],
        "an option contributes all of its own combinations"
    );
    let c = Compiled::new(&parse("{a {x|y}|b}").unwrap(), &Library::default());
    let r = c.nth(1);
    assert_eq!(
        r.choices,
        ["a y", "y"],
        "outer choice first, then the nested one"
    );
    // A multi-pick of options that themselves vary.
    let picks = combos("{2$${a|b}|c|{d|e}}");
    assert_eq!(picks.len(), 2 + 2 * 2 + 2);
    assert!(picks.contains(&"b, e".to_string()), "{picks:?}");
}

#[test]
fn weights_parse_and_do_not_change_combinatorial_lists() {
    let t = parse("{0.5::a|2::b|c}").unwrap();
    let Part::Variant(v) = &t.parts[0] else {
        panic!("{t:?}")
    };
    let w: Vec<f64> = v.options.iter().map(|o| o.weight).collect();
    assert_eq!(w, [0.5, 2.0, 1.0]);
    assert_eq!(combos("{0.5::a|2::b|c}"), ["a", "b", "c"]);
}

#[test]
fn weights_steer_random_draws() {
    let c = Compiled::new(&parse("{1::a|3::b}").unwrap(), &Library::default());
    let n = 4000;
    let bs = (0..n)
        .filter(|&i| c.sample(&mut cell_rng(7, i)).text == "b")
        .count();
    let share = bs as f64 / n as f64;
    // Expected 0.75; 4000 draws put 3 standard deviations at about 0.02.
    assert!((0.7..0.8).contains(&share), "share of b = {share}");
    let zero = Compiled::new(&parse("{0::a|1::b}").unwrap(), &Library::default());
    assert!((0..200).all(|i| zero.sample(&mut cell_rng(1, i)).text == "b"));
}

#[test]
fn random_draws_are_reproducible_and_vary_by_cell() {
    let library = lib(&[("animal", "cat\ndog\nfox\nowl\n")]);
    let c = Compiled::new(
        &parse("a {red|blue|green} __animal__, {2$$x|y|z}").unwrap(),
        &library,
    );
    let first: Vec<Resolved> = (0..50).map(|i| c.sample(&mut cell_rng(42, i))).collect();
    let again: Vec<Resolved> = (0..50).map(|i| c.sample(&mut cell_rng(42, i))).collect();
    assert_eq!(first, again);
    let distinct: std::collections::BTreeSet<_> = first.iter().map(|r| &r.text).collect();
    assert!(distinct.len() > 10, "{distinct:?}");
    let other: Vec<Resolved> = (0..50).map(|i| c.sample(&mut cell_rng(43, i))).collect();
    assert_ne!(first, other, "another job seed draws other choices");
    for r in &first {
        assert_eq!(r.choices.len(), 3, "{r:?}");
        assert!(r.text.contains(&r.choices[1]), "{r:?}");
    }
}

#[test]
fn random_multi_pick_draws_distinct_options() {
    let c = Compiled::new(&parse("{2$$a|b|c|d}").unwrap(), &Library::default());
    for i in 0..100 {
        let t = c.sample(&mut cell_rng(3, i)).text;
        let picks: Vec<&str> = t.split(", ").collect();
        assert_eq!(picks.len(), 2, "{t}");
        assert_ne!(picks[0], picks[1], "{t}");
    }
}

#[test]
fn wildcards_read_lines_and_nest() {
    let library = lib(&[
        (
            "colors",
            "# primary colours\nred\n\n  blue  \n{light|dark} green\n",
        ),
        ("people/artists", "__colors__ painter\n"),
    ]);
    assert_eq!(
        all("__colors__", &library),
        ["red", "blue", "light green", "dark green"]
    );
    let c = Compiled::new(&parse("by __people/artists__").unwrap(), &library);
    assert_eq!(c.count(), 4);
    let r = c.nth(2);
    assert_eq!(r.text, "by light green painter");
    assert_eq!(r.choices, ["light green painter", "light green", "light"]);
}

#[test]
fn underscores_that_are_not_wildcards_stay_text() {
    let t = parse("snake_case __ and __ a b__ and ___").unwrap();
    assert!(t.is_plain(), "{t:?}");
    assert_eq!(
        parse("x __a b__").unwrap().wildcards(),
        Vec::<String>::new()
    );
    assert_eq!(parse("{__a__|__b/c__}").unwrap().wildcards(), ["a", "b/c"]);
}

#[test]
fn escapes_are_literal() {
    assert_eq!(combos(r"\{a\|b\} {c|d}"), ["{a|b} c", "{a|b} d"]);
}

#[test]
fn stable_across_compilations() {
    let text = "{a|b|c} {1-2$$x|y|z} {0.3::p|q}";
    let a = Compiled::new(&parse(text).unwrap(), &Library::default());
    let b = Compiled::new(&parse(text).unwrap(), &Library::default());
    assert_eq!(a.count(), 3 * 6 * 2);
    for i in 0..a.count() {
        assert_eq!(a.nth(i), b.nth(i));
        assert_eq!(a.sample(&mut cell_rng(9, i)), b.sample(&mut cell_rng(9, i)));
    }
    let distinct: std::collections::BTreeSet<String> =
        (0..a.count()).map(|i| a.nth(i).text).collect();
    assert_eq!(
        distinct.len() as u64,
        a.count(),
        "every index is its own combination"
    );
}

#[test]
fn syntax_errors_name_the_problem_and_place() {
    let err = |t: &str| parse(t).unwrap_err().to_string();
    assert_eq!(err("a {b|c"), "`{` is never closed by a `}` at character 3");
    assert_eq!(err("a b}"), "`}` has no matching `{` at character 4");
    assert_eq!(err("{}"), "`{}` has no options at character 1");
    assert!(
        err("{x$$a|b}").contains("`{x$$` is not a pick count"),
        "{}",
        err("{x$$a|b}")
    );
    assert!(err("{3-1$$a|b|c}").contains("runs backwards"));
}

#[test]
fn wildcard_errors_name_the_file() {
    let t = parse("__missing__").unwrap();
    let e = Library::gather(&[&t], &Vec::new, &mut |_| None, &|n| {
        format!("{n}.txt not found in folder wild")
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "wildcard __missing__ has no file: missing.txt not found in folder wild"
    );
    let files: BTreeMap<String, String> = [
        ("a".to_string(), "__b__".to_string()),
        ("b".to_string(), "x\n__a__".to_string()),
    ]
    .into();
    let e = Library::from_texts(&files).unwrap_err();
    assert!(matches!(e, DynamicError::Cycle(_)), "{e}");
    let files: BTreeMap<String, String> = [("e".to_string(), "# nothing\n\n".to_string())].into();
    assert_eq!(
        Library::from_texts(&files).unwrap_err(),
        DynamicError::EmptyWildcard { name: "e".into() }
    );
    let files: BTreeMap<String, String> = [("s".to_string(), "ok\n{broken\n".to_string())].into();
    let e = Library::from_texts(&files).unwrap_err().to_string();
    assert!(e.starts_with("wildcard file `s` line 2:"), "{e}");
}

/// The library `text` needs, gathered from `files` as a folder would give them.
fn gathered(text: &str, files: &[(&str, &str)]) -> Result<Library> {
    let files: BTreeMap<String, String> = files
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    Library::gather(
        &[&parse(text).unwrap()],
        // Listed out of order: the match order must not depend on the listing's.
        &|| files.keys().rev().cloned().collect(),
        &mut |n| files.get(n).cloned(),
        &|n| format!("{n}.txt not in the test set"),
    )
}

const GLOB_FILES: &[(&str, &str)] = &[
    ("colors-warm", "red\norange\n"),
    ("colors", "# base\nblack\nwhite\n"),
    ("colors-cold", "blue\n{teal|cyan}\n"),
    ("people/job", "baker\nsailor\n"),
    (
        "people/crew/captain",
        "captain of the __colors-cold__ ship\n",
    ),
    ("peoplex", "never matched by people/*\n"),
    ("shapes", "circle\n"),
];

/// The options the files matching `matches` hold, file after file in sorted name order, each
/// file's options expanded as `__file__` alone expands them.
fn union_of(matches: impl Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<&str> = GLOB_FILES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| matches(n))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            let text = format!("__{n}__");
            all(&text, &gathered(&text, GLOB_FILES).unwrap())
        })
        .collect()
}

#[test]
fn glob_wildcard_offers_every_matching_file_in_sorted_order() {
    let text = "__colors*__";
    let got = all(text, &gathered(text, GLOB_FILES).unwrap());
    let want = union_of(|n| n.starts_with("colors"));
    assert_eq!(got, want);
    // Three files matched, their order sorted by name, not by listing or by the slice.
    assert!(want.len() >= 3 + 2 + 2, "{want:?}");
    assert_eq!(
        got.first().map(String::as_str),
        Some("black"),
        "colors sorts first"
    );
}

#[test]
fn glob_wildcard_reaches_into_sub_folders_and_follows_references() {
    let text = "a __people/*__";
    let got = all(text, &gathered(text, GLOB_FILES).unwrap());
    let want: Vec<String> = union_of(|n| n.starts_with("people/"))
        .into_iter()
        .map(|o| format!("a {o}"))
        .collect();
    assert_eq!(got, want);
    assert!(
        got.iter().any(|p| p.contains("captain of the teal ship")),
        "people/crew/captain's own wildcard is expanded: {got:?}"
    );
    assert!(!got.iter().any(|p| p.contains("never matched")), "{got:?}");
}

#[test]
fn glob_wildcard_in_random_mode_draws_from_the_union() {
    let text = "__*s__";
    let lib = gathered(text, GLOB_FILES).unwrap();
    let union = union_of(|n| n.ends_with('s'));
    let compiled = Compiled::new(&parse(text).unwrap(), &lib);
    let mut seen = std::collections::BTreeSet::new();
    for cell in 0..200 {
        let drawn = compiled.sample(&mut cell_rng(7, cell)).text;
        assert!(
            union.contains(&drawn),
            "{drawn:?} is not an option of {union:?}"
        );
        seen.insert(drawn);
    }
    assert_eq!(
        seen.len(),
        union.len(),
        "every option is drawn in 200 cells"
    );
}

#[test]
fn glob_wildcard_matching_nothing_is_named() {
    let e = gathered("__sizes*__", GLOB_FILES).unwrap_err().to_string();
    assert!(
        e.contains("__sizes*__") && e.contains("no wildcard file matches"),
        "{e}"
    );
}

#[test]
fn glob_patterns_match_as_fnmatch_star_does() {
    for (pattern, name, matched) in [
        ("colors*", "colors", true),
        ("colors*", "colors/dark", true),
        ("*", "people/job", true),
        ("people/*", "peoplex", false),
        ("*-warm", "colors-warm", true),
        ("c*s*m", "colors-warm", true),
        ("a*a", "a", false),
        ("a*b*c", "acb", false),
        ("job", "job", true),
    ] {
        assert_eq!(glob_matches(pattern, name), matched, "{pattern} vs {name}");
    }
}
