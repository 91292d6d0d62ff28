//! Wildcard files from an object-store prefix: `[wildcards] folder = "s3://bucket/prefix"`
//! plans exactly as the same files in a local folder do, sub-"folders" included, and a prefix
//! that holds nothing usable is named in the error.

use std::collections::BTreeSet;
use std::process::Command;

use object_store::{path::Path as ObjectPath, ObjectStore, PutPayload};
use sdfarm_e2e::*;
use serde_json::Value;

/// Wildcard files by key under the prefix: one at the top, one a "folder" down, one that
/// refers to another file.
const FILES: &[(&str, &str)] = &[
    ("color.txt", "# colours\nred\n\nblue\n"),
    ("people/job.txt", "baker\n{old|young} sailor\n"),
    ("people/crew.txt", "__people/job__ and a __color__ parrot\n"),
];

const PROMPT: &str = "a __color__ hat on {a __people/job__|the __people/crew__}";

fn sweep(folder: &str) -> String {
    format!(
        "model = \"builtin:tiny-sd\"\nprompt = \"{PROMPT}\"\nseed = 7\n\
         [wildcards]\nfolder = \"{folder}\"\n"
    )
}

fn plan(dir: &std::path::Path, name: &str, text: &str, env: &[(&str, String)]) -> Vec<Value> {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    sdfarm_ok(&["plan", path.to_str().unwrap(), "--json"], env)
        .lines()
        .map(|l| serde_json::from_str(l).expect("plan --json prints JSON lines"))
        .collect()
}

/// `sdfarm plan` on the sweep, expected to fail: its stderr.
fn plan_error(dir: &std::path::Path, name: &str, text: &str, env: &[(&str, String)]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(sdfarm_bin())
        .args(["plan", path.to_str().unwrap(), "--json"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "plan of {name} should fail; it printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn options(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[tokio::test]
async fn plan_reads_wildcard_files_from_an_s3_prefix_as_from_a_local_folder() {
    let s3 = S3Server::start();
    let store = s3.store();
    for (key, text) in FILES {
        store
            .put(
                &ObjectPath::from(format!("sets/wild/{key}")),
                PutPayload::from(text.as_bytes().to_vec()),
            )
            .await
            .unwrap();
    }
    // Objects that are not wildcard files are passed over; a sibling prefix whose name starts
    // the same is not part of the folder.
    for (key, bytes) in [
        ("sets/wild/README.md", "about these files"),
        ("sets/wildlife/color.txt", "green\n"),
        ("sets/images/cat.png", "not text"),
    ] {
        store
            .put(
                &ObjectPath::from(key),
                PutPayload::from(bytes.as_bytes().to_vec()),
            )
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    for (key, text) in FILES {
        let path = dir.path().join("wild").join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let env = s3.env();
    let url = format!("s3://{}/sets/wild", s3.bucket);

    let remote = plan(dir.path(), "remote.toml", &sweep(&url), &env);
    let local = plan(dir.path(), "local.toml", &sweep("wild"), &env);
    assert_eq!(
        remote, local,
        "the same files planned from {url} and from a local folder"
    );

    // Every prompt is made of options the uploaded files hold, and every one of them is used.
    let (summary, cells) = remote.split_last().unwrap();
    let colors = options(FILES[0].1);
    let jobs = ["baker", "old sailor", "young sailor"];
    let expected = colors.len() * (jobs.len() + jobs.len() * colors.len());
    assert_eq!(cells.len(), expected, "{summary}");
    let prompts: BTreeSet<&str> = cells
        .iter()
        .map(|c| c["prompt"].as_str().unwrap())
        .collect();
    assert_eq!(prompts.len(), expected, "every combination once");
    for color in &colors {
        for job in jobs {
            let direct = format!("a {color} hat on a {job}");
            assert!(prompts.contains(direct.as_str()), "missing {direct:?}");
            for parrot in &colors {
                let crew = format!("a {color} hat on the {job} and a {parrot} parrot");
                assert!(prompts.contains(crew.as_str()), "missing {crew:?}");
            }
        }
    }
    assert!(
        !prompts.iter().any(|p| p.contains("green")),
        "a file from the sibling prefix sets/wildlife was read"
    );

    // Glob wildcards match the files of the prefix as they match a local folder's.
    let glob = |folder: &str| sweep(folder).replace(PROMPT, "__people/*__ in a __colo*__ hat");
    let remote = plan(dir.path(), "glob-remote.toml", &glob(&url), &env);
    assert_eq!(
        remote,
        plan(dir.path(), "glob-local.toml", &glob("wild"), &env)
    );
    let prompts: BTreeSet<&str> = remote
        .split_last()
        .unwrap()
        .1
        .iter()
        .map(|c| c["prompt"].as_str().unwrap())
        .collect();
    for color in &colors {
        for job in jobs {
            let p = format!("{job} in a {color} hat");
            assert!(prompts.contains(p.as_str()), "missing {p:?} in {prompts:?}");
        }
    }

    // A prefix with nothing under it, one with no .txt file, and a wildcard the prefix lacks.
    let empty = format!("s3://{}/sets/none", s3.bucket);
    let err = plan_error(dir.path(), "empty.toml", &sweep(&empty), &env);
    assert!(
        err.contains(&empty) && err.contains("no such prefix"),
        "error should name {empty} and say it holds nothing: {err}"
    );
    let images = format!("s3://{}/sets/images", s3.bucket);
    let err = plan_error(dir.path(), "images.toml", &sweep(&images), &env);
    assert!(
        err.contains(&images) && err.contains("no .txt"),
        "error should name {images} and say it has no .txt files: {err}"
    );
    let missing = sweep(&url).replace("__color__ hat", "__size__ hat");
    let err = plan_error(dir.path(), "missing.toml", &missing, &env);
    assert!(
        err.contains("size.txt") && err.contains(&url),
        "error should name the missing file and {url}: {err}"
    );
}
