//! `cargo xtask kmod-lines`: how many lines of `kmod/compat/*.rs` and
//! `kmod/glue.c` each kernel line compiles (docs/kernel-module.md, "Which
//! shims remain").
//!
//! A line leaves out every item or statement that carries the other line's
//! cfg attribute (`#[cfg(kchat_kapi7)]` for 6.12, `#[cfg(not(kchat_kapi7))]`
//! for 7.x): the attribute, the `///` lines right above it, and everything
//! from it to the end of the item (bracket depth back to 0 at a line ending
//! in `;`, `}` or `,`). In `glue.c`, 7.x leaves out each `#ifndef
//! KCHAT_KAPI7` block up to its `#endif`. `compat/` and `glue.c` use the cfg
//! only in these forms.

use anyhow::{Context, Result};
use std::{collections::BTreeSet, path::Path};

const ONLY_7: &str = "#[cfg(kchat_kapi7)]";
const ONLY_6: &str = "#[cfg(not(kchat_kapi7))]";

/// Indices of the lines that the item under each `attr` spans.
fn dropped(lines: &[&str], attr: &str) -> BTreeSet<usize> {
    let mut drop = BTreeSet::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != attr {
            i += 1;
            continue;
        }
        let mut start = i;
        while start > 0 && lines[start - 1].trim_start().starts_with("///") {
            start -= 1;
        }
        let mut depth = 0i64;
        let mut seen_code = false;
        let mut end = i + 1;
        while end < lines.len() {
            let text = lines[end].trim();
            if !seen_code && (text.starts_with("#[") || text.starts_with("//")) {
                end += 1;
                continue;
            }
            seen_code = true;
            let code = text.split("//").next().unwrap_or("").trim_end();
            for c in code.chars() {
                match c {
                    '{' | '(' | '[' => depth += 1,
                    '}' | ')' | ']' => depth -= 1,
                    _ => {}
                }
            }
            if depth == 0 && (code.ends_with(';') || code.ends_with('}') || code.ends_with(',')) {
                break;
            }
            end += 1;
        }
        drop.extend(start..=end.min(lines.len() - 1));
        i = end + 1;
    }
    drop
}

/// (all, 6.12, 7.x) lines of one Rust file's text.
pub fn rust_counts(text: &str) -> (usize, usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let all = lines.len();
    (
        all,
        all - dropped(&lines, ONLY_7).len(),
        all - dropped(&lines, ONLY_6).len(),
    )
}

/// (all, 7.x) lines of `glue.c`'s text.
pub fn c_counts(text: &str) -> (usize, usize) {
    let mut only_6 = 0;
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("#ifndef KCHAT_KAPI7") {
            inside = true;
        }
        if inside {
            only_6 += 1;
            if line.starts_with("#endif") {
                inside = false;
            }
        }
    }
    let all = text.lines().count();
    (all, all - only_6)
}

/// Prints the table docs/kernel-module.md shows.
pub fn print(kmod: &Path) -> Result<()> {
    let compat = kmod.join("compat");
    let mut files: Vec<_> = std::fs::read_dir(&compat)
        .with_context(|| format!("could not list {}", compat.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .collect();
    files.sort();
    println!("| file | lines | 6.12 | 7.x |\n|---|---|---|---|");
    let mut total = (0, 0, 0);
    for path in &files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read {}", path.display()))?;
        let (all, old, new) = rust_counts(&text);
        total = (total.0 + all, total.1 + old, total.2 + new);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        println!("| `{name}` | {all} | {old} | {new} |");
    }
    println!(
        "| all of `compat/` | {} | {} | {} |",
        total.0, total.1, total.2
    );
    let glue = kmod.join("glue.c");
    let text = std::fs::read_to_string(&glue)
        .with_context(|| format!("could not read {}", glue.display()))?;
    let (all, new) = c_counts(&text);
    println!("| `glue.c` | {all} | {all} | {new} |");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_leaves_out_the_others_items_with_their_docs() {
        let text = "\
use a;
/// Old.
#[cfg(not(kchat_kapi7))]
pub(crate) struct S(u32);
/// New.
#[cfg(kchat_kapi7)]
impl S {
    fn f() {
        g(
            1,
        );
    }
}
fn h() -> u32 {
    #[cfg(not(kchat_kapi7))]
    // SAFETY: x.
    return unsafe { x() };
    #[cfg(kchat_kapi7)]
    return 1;
}
";
        // 20 lines; 6.12 drops the impl with its doc line (9) and the
        // 2-line return, 7.x the struct with its doc line (3) and the
        // return with its comment (3).
        assert_eq!(rust_counts(text), (20, 9, 14));
    }

    #[test]
    fn glue_blocks_are_six_twelve_only() {
        let text = "a\n#ifndef KCHAT_KAPI7\nb\n#endif\nc\n";
        assert_eq!(c_counts(text), (5, 2));
    }
}
