//! A1111 version strings compared as `packaging.version` (PEP 440) compares them, for the
//! backwards-compatibility switches an infotext's `Version` field turns on.

use super::infotext::py_strip;

/// A PEP 440 version as `packaging.version` orders it, for the few comparisons backcompat
/// makes. Fields are in comparison order, encoded so that packaging's infinities sort right.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Version {
    epoch: u64,
    /// Trailing zeros dropped: 1.6.0 == 1.6.
    release: Vec<u64>,
    /// (0, ..) dev-only release, before its pre-releases; (1, letter, n) pre-release;
    /// (2, ..) final.
    pre: (u8, u8, u64),
    /// `None` (no post-release) sorts first.
    post: Option<u64>,
    /// (0, n) dev release; (1, 0) none, which sorts last.
    dev: (u8, u64),
    local: bool,
}

impl Version {
    fn new(release: &[u64], post: Option<u64>) -> Version {
        let mut release = release.to_vec();
        while release.last() == Some(&0) {
            release.pop();
        }
        Version {
            epoch: 0,
            release,
            pre: (2, 0, 0),
            post,
            dev: (1, 0),
            local: false,
        }
    }

    pub(super) fn v160() -> Version {
        Version::new(&[1, 6, 0], None)
    }

    pub(super) fn v170_tsnr() -> Version {
        Version::new(&[1, 7, 0], Some(225))
    }

    pub(super) fn v180() -> Version {
        Version::new(&[1, 8, 0], None)
    }

    pub(super) fn v180_hr_styles() -> Version {
        Version::new(&[1, 8, 0], Some(139))
    }
}

/// `infotext_versions.parse_version`: `v1.7.0-133-gde03882d` (a git describe) is cut to
/// `v1.7.0-133`, i.e. post-release 133; anything packaging cannot read is `None`.
pub(super) fn version(text: Option<&str>) -> Option<Version> {
    let text = text?;
    let mut parts = text.splitn(3, '-');
    let cut = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(b), Some(_)) if !a.is_empty() && !b.is_empty() => {
            &text[..a.len() + 1 + b.len()]
        }
        _ => text,
    };
    parse_pep440(cut)
}

/// Enough of PEP 440 for A1111 tags: `[v][N!]N(.N)*[{a|b|c|rc|alpha|beta|pre|preview}[N]]`
/// `[-N | .postN | -rN]` `[.devN]` `[+local]`, separators `-_.` optional, case-insensitive.
fn parse_pep440(text: &str) -> Option<Version> {
    let lower = py_strip(text).to_ascii_lowercase();
    let mut rest = lower.strip_prefix('v').unwrap_or(&lower);
    let number = |s: &mut &str| -> Option<u64> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let n = s[..end].parse().ok()?;
        *s = &s[end..];
        Some(n)
    };
    let sep = |s: &mut &str| *s = s.strip_prefix(['-', '_', '.']).unwrap_or(s);
    let mut epoch = 0;
    if let Some((e, after)) = rest.split_once('!') {
        epoch = e.parse().ok()?;
        rest = after;
    }
    let mut release = vec![number(&mut rest)?];
    while let Some(after) = rest
        .strip_prefix('.')
        .filter(|a| a.starts_with(|c: char| c.is_ascii_digit()))
    {
        rest = after;
        release.push(number(&mut rest)?);
    }
    let mut v = Version::new(&release, None);
    v.epoch = epoch;

    let labelled = |s: &str, labels: &[&str]| -> Option<(usize, usize)> {
        let body = s.strip_prefix(['-', '_', '.']).unwrap_or(s);
        let skipped = s.len() - body.len();
        labels
            .iter()
            .enumerate()
            .find(|(_, l)| body.starts_with(*l))
            .map(|(i, l)| (i, skipped + l.len()))
    };
    let optional_number = |s: &mut &str| -> u64 {
        let mut probe = *s;
        sep(&mut probe);
        match number(&mut probe) {
            Some(n) => {
                *s = probe;
                n
            }
            None => 0,
        }
    };
    // Longer spellings first so "preview" is not read as "pre" + "view".
    let pre_labels = ["alpha", "beta", "preview", "pre", "rc", "a", "b", "c"];
    if let Some((i, len)) = labelled(rest, &pre_labels) {
        rest = &rest[len..];
        let rank = match pre_labels[i] {
            "alpha" | "a" => 0,
            "beta" | "b" => 1,
            _ => 2,
        };
        v.pre = (1, rank, optional_number(&mut rest));
    }
    if let Some(after) = rest
        .strip_prefix('-')
        .filter(|a| a.starts_with(|c: char| c.is_ascii_digit()))
    {
        rest = after;
        v.post = Some(number(&mut rest)?);
    } else if let Some((_, len)) = labelled(rest, &["post", "rev", "r"]) {
        rest = &rest[len..];
        v.post = Some(optional_number(&mut rest));
    }
    if let Some((_, len)) = labelled(rest, &["dev"]) {
        rest = &rest[len..];
        v.dev = (0, optional_number(&mut rest));
        if v.pre.0 == 2 && v.post.is_none() {
            v.pre.0 = 0;
        }
    }
    if let Some(local) = rest.strip_prefix('+') {
        let ok = !local.is_empty()
            && local
                .split(['-', '_', '.'])
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()));
        if !ok {
            return None;
        }
        v.local = true;
        rest = "";
    }
    rest.is_empty().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_like_packaging() {
        let v = |s: &str| version(Some(s)).unwrap_or_else(|| panic!("{s} should parse"));
        assert!(v("v1.7.0-133-gde03882d") < Version::v170_tsnr());
        assert!(v("v1.7.0-225-gabc") == Version::v170_tsnr());
        assert!(v("v1.7.0") < Version::v170_tsnr());
        assert!(v("v1.10.1") > Version::v180());
        assert!(v("v1.6.0-RC-28-gdeadbee") < Version::v160());
        assert!(v("1.6.0") == Version::v160());
        assert!(v("1.8.0.dev3") < v("1.8.0rc1"));
        assert!(v("1.8.0rc1") < Version::v180());
        assert!(v("1.8.0") < Version::v180_hr_styles());
        assert!(v("1.8.0.post1") > Version::v180());
        assert!(v("1.8.0+local.7") > Version::v180());
        for bad in [
            "sdfarm 0.1.0",
            "f0.0.17v1.8.0rc-latest-276-g29be1da7",
            "",
            "abc",
            "1.2.x",
        ] {
            assert!(version(Some(bad)).is_none(), "{bad}");
        }
    }
}
