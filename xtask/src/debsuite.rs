//! A Debian package from a suite the machine does not install from (the
//! 7.3 kernel source lives in `trixie-backports`): fetched with a private
//! apt configuration in the cache, from the Debian archive the machine's own
//! apt sources name, so that the project never writes a host name down and
//! never changes what the system installs from.

use crate::process;
use anyhow::{bail, Context, Result};
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

/// Where Debian's archive keyring lives when a source names none.
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A package fetched into the cache.
pub struct Fetched {
    pub version: String,
    pub deb: PathBuf,
}

/// Fetches the newest `package` of `suite` into `cache/apt`, or reuses the
/// one fetched before when it is still the newest (or the archive cannot be
/// reached and a copy is there).
pub fn fetch(cache: &Path, suite: &str, package: &str) -> Result<Fetched> {
    let dir = cache.join("apt").join(suite);
    let archive = machine_archive()
        .with_context(|| format!("finding the Debian archive to fetch {package} ({suite}) from"))?;
    fs::create_dir_all(dir.join("lists/partial"))?;
    fs::create_dir_all(dir.join("archives/partial"))?;
    let sources = dir.join("sources.list");
    fs::write(
        &sources,
        format!(
            "deb [signed-by={}] {} {suite} main\n",
            archive.keyring, archive.uri
        ),
    )?;
    let apt = |tool: &str| {
        let mut cmd = Command::new(tool);
        cmd.arg("-q")
            .arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", sources.display()))
            .arg("-o")
            .arg("Dir::Etc::SourceParts=/dev/null")
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", dir.join("lists").display()))
            .arg("-o")
            .arg("Dir::State::status=/dev/null")
            .arg("-o")
            .arg(format!("Dir::Cache={}", dir.display()))
            .arg("-o")
            .arg("APT::Sandbox::User=root")
            .current_dir(&dir);
        cmd
    };
    let updated = process::output(apt("apt-get").arg("update"));
    let version = process::stdout(
        apt("apt-cache")
            .arg("show")
            .arg("--no-all-versions")
            .arg(package),
    )
    .ok()
    .and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("Version: ").map(str::to_owned))
    });
    let Some(version) = version else {
        if let Some(fetched) = newest_cached(&dir, package)? {
            eprintln!(
                "kernel: {suite} could not be read ({}); using the {package} fetched before ({})",
                updated.err().map_or_else(String::new, |e| format!("{e:#}")),
                fetched.version
            );
            return Ok(fetched);
        }
        if let Err(err) = updated {
            return Err(err.context(format!("reading {suite} from {}", archive.uri)));
        }
        bail!("{} {suite} has no {package}", archive.uri);
    };
    let deb = dir.join(deb_name(package, &version));
    if !deb.exists() {
        eprintln!("kernel: fetching {package} {version} from {suite}");
        process::output(apt("apt-get").arg("download").arg(package))?;
        if !deb.exists() {
            bail!(
                "apt-get download {package} left no {} in {}",
                deb_name(package, &version),
                dir.display()
            );
        }
        // Older downloads of the package are superseded.
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path != deb && is_deb_of(&path, package) {
                let _ = fs::remove_file(&path);
            }
        }
    }
    Ok(Fetched { version, deb })
}

/// The file name apt gives a downloaded package (an epoch's ':' becomes
/// "%3a").
fn deb_name(package: &str, version: &str) -> String {
    format!("{package}_{}_all.deb", version.replace(':', "%3a"))
}

fn is_deb_of(path: &Path, package: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
}

fn newest_cached(dir: &Path, package: &str) -> Result<Option<Fetched>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    for entry in entries {
        let path = entry?.path();
        if is_deb_of(&path, package) {
            let version =
                process::stdout(Command::new("dpkg-deb").arg("-f").arg(&path).arg("Version"))?;
            return Ok(Some(Fetched { version, deb: path }));
        }
    }
    Ok(None)
}

/// The machine's Debian archive: the first `deb` source that serves the
/// release the machine runs (its codename as a suite).
#[derive(Debug, PartialEq)]
struct Archive {
    uri: String,
    keyring: String,
}

fn machine_archive() -> Result<Archive> {
    let os_release = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
        .filter(|c| !c.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: is this Debian?")?;
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let found = match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => find_deb822(&text, &codename),
            Some("list") => find_one_line(&text, &codename),
            _ => None,
        };
        if let Some(archive) = found {
            return Ok(archive);
        }
    }
    bail!(
        "no apt source of type deb serves suite {codename:?} (/etc/apt/sources.list, \
         /etc/apt/sources.list.d/): add the Debian archive you use"
    )
}

/// One-line format: `deb [options] URI SUITE COMPONENT...`.
fn find_one_line(text: &str, codename: &str) -> Option<Archive> {
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let (options, rest) = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']')?,
            None => ("", rest),
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        if suite == codename {
            let keyring = options
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .unwrap_or(DEFAULT_KEYRING);
            return Some(Archive {
                uri: uri.to_owned(),
                keyring: keyring.to_owned(),
            });
        }
    }
    None
}

/// deb822 format: stanzas of `Field: value`, separated by blank lines.
fn find_deb822(text: &str, codename: &str) -> Option<Archive> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (key, value) = l.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        let enabled = field("Enabled").is_none_or(|v| v != "no");
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let serves = field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == codename));
        if !(enabled && is_deb && serves) {
            continue;
        }
        let uri = field("URIs")?.split_whitespace().next()?.to_owned();
        // An inline key block is not a path; fall back to the archive keyring.
        let keyring = field("Signed-By")
            .filter(|k| k.starts_with('/'))
            .unwrap_or_else(|| DEFAULT_KEYRING.to_owned());
        return Some(Archive { uri, keyring });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_takes_the_stanza_of_the_release_not_security() {
        let text = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
                    Types: deb deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n";
        assert_eq!(
            find_deb822(text, "bookworm"),
            Some(Archive {
                uri: "http://mirror.example/debian".into(),
                keyring: "/k.gpg".into()
            })
        );
        assert_eq!(find_deb822(text, "trixie"), None);
    }

    #[test]
    fn deb822_skips_disabled_and_source_only_stanzas() {
        let text = "Types: deb-src\nURIs: http://a/debian\nSuites: bookworm\n\n\
                    Enabled: no\nTypes: deb\nURIs: http://b/debian\nSuites: bookworm\n\n\
                    Types: deb\nURIs: http://c/debian\nSuites: bookworm\n";
        assert_eq!(
            find_deb822(text, "bookworm").unwrap().uri,
            "http://c/debian"
        );
        assert_eq!(
            find_deb822(text, "bookworm").unwrap().keyring,
            DEFAULT_KEYRING
        );
    }

    #[test]
    fn one_line_format_with_and_without_options() {
        let text = "# deb http://old/debian bookworm main\n\
                    deb-src http://src/debian bookworm main\n\
                    deb http://sec/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/x.gpg] http://m/debian bookworm main contrib\n";
        assert_eq!(
            find_one_line(text, "bookworm"),
            Some(Archive {
                uri: "http://m/debian".into(),
                keyring: "/x.gpg".into()
            })
        );
        assert_eq!(
            find_one_line("deb http://m/debian bookworm main\n", "bookworm")
                .unwrap()
                .keyring,
            DEFAULT_KEYRING
        );
    }

    #[test]
    fn apt_names_downloads_with_the_epoch_escaped() {
        assert_eq!(
            deb_name("linux-source-7.3", "1:7.3.4-1~bpo13+1"),
            "linux-source-7.3_1%3a7.3.4-1~bpo13+1_all.deb"
        );
    }
}
