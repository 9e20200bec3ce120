//! Every relative link and `#anchor` in `README.md` and `docs/*.md` resolves: the linked file or
//! folder exists, and an anchor matches a heading of the linked page under GitHub's slug rule
//! (lowercase; drop every character that is not a letter, digit, space, `-` or `_`; spaces to
//! `-`; repeated headings get `-1`, `-2`, ...). Links inside code blocks and code spans are not
//! links and are skipped; so are absolute URLs (`http:`, `https:`, `mailto:`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// A link found in a markdown file: its 1-based line and its target as written.
struct Link {
    line: usize,
    target: String,
}

/// GitHub's heading anchor for the rendered text of a heading.
fn slug(rendered: &str) -> String {
    rendered
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The text a heading renders to: code-span backticks, emphasis stars and link syntax removed
/// (`[text](target)` renders as `text`).
fn rendered_heading(raw: &str) -> String {
    let without_links = replace_links_by_text(raw);
    without_links.replace(['`', '*'], "")
}

fn replace_links_by_text(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let Some(close_rel) = rest[open..].find("](") else {
            break;
        };
        let close = open + close_rel;
        let Some(end_rel) = rest[close + 2..].find(')') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..close]);
        rest = &rest[close + 2 + end_rel + 1..];
    }
    out.push_str(rest);
    out
}

/// Removes inline code spans (any run of backticks up to the next run of the same length).
fn strip_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '`' {
            let mut run = 0;
            while i + run < chars.len() && chars[i + run] == '`' {
                run += 1;
            }
            // Look for a closing run of exactly `run` backticks.
            let mut j = i + run;
            let mut closed = None;
            while j < chars.len() {
                if chars[j] == '`' {
                    let mut r = 0;
                    while j + r < chars.len() && chars[j + r] == '`' {
                        r += 1;
                    }
                    if r == run {
                        closed = Some(j + r);
                        break;
                    }
                    j += r;
                } else {
                    j += 1;
                }
            }
            match closed {
                Some(after) => {
                    out.push(' ');
                    i = after;
                }
                None => {
                    out.extend(&chars[i..i + run]);
                    i += run;
                }
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Headings (outside code fences) and links (outside code fences and code spans) of a page.
fn scan(markdown: &str) -> (Vec<String>, Vec<Link>) {
    let mut headings = Vec::new();
    let mut links = Vec::new();
    let mut fence: Option<String> = None;
    for (idx, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(marker) = &fence {
            if trimmed.starts_with(marker.as_str()) {
                fence = None;
            }
            continue;
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = Some(trimmed[..3].to_string());
            continue;
        }
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            headings.push(rendered_heading(trimmed[hashes..].trim_end_matches('#')));
        }
        let text = strip_code_spans(line);
        // Reference definitions: `[label]: target`.
        if let Some(rest) = text.trim_start().strip_prefix('[') {
            if let Some(pos) = rest.find("]:") {
                let target = rest[pos + 2..].split_whitespace().next().unwrap_or("");
                if !target.is_empty() {
                    links.push(Link {
                        line: idx + 1,
                        target: target.to_string(),
                    });
                }
            }
        }
        // Inline links and images: `[text](target "title")`.
        let mut rest = text.as_str();
        while let Some(pos) = rest.find("](") {
            let after = &rest[pos + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let inner = after[..end].trim();
            let target = inner
                .trim_start_matches('<')
                .split_whitespace()
                .next()
                .unwrap_or("");
            let target = target.trim_end_matches('>');
            links.push(Link {
                line: idx + 1,
                target: target.to_string(),
            });
            rest = &after[end.min(after.len())..];
        }
    }
    (headings, links)
}

/// The anchors of a page's headings, with GitHub's `-N` suffixes for repeats.
fn anchors(headings: &[String]) -> HashSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = HashSet::new();
    for h in headings {
        let base = slug(h);
        let n = seen.entry(base.clone()).or_insert(0);
        let anchor = if *n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        *n += 1;
        out.insert(anchor);
    }
    out
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

/// Every broken link of the given pages, as `file:line: target: reason`.
fn broken_links(root: &Path, pages: &[PathBuf]) -> Vec<String> {
    let mut problems = Vec::new();
    for page in pages {
        let text = match std::fs::read_to_string(page) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}", page.display()));
                continue;
            }
        };
        let (own_headings, links) = scan(&text);
        let shown = page
            .strip_prefix(root)
            .unwrap_or(page)
            .display()
            .to_string();
        for link in links {
            if link.target.is_empty() {
                problems.push(format!("{shown}:{}: empty link target", link.line));
                continue;
            }
            if is_external(&link.target) {
                continue;
            }
            let (path_part, anchor) = match link.target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.target.as_str(), None),
            };
            let (file, headings) = if path_part.is_empty() {
                (page.clone(), own_headings.clone())
            } else {
                let file = page.parent().unwrap_or(root).join(path_part);
                if !file.exists() {
                    problems.push(format!(
                        "{shown}:{}: {}: no such file or folder {}",
                        link.line,
                        link.target,
                        file.display()
                    ));
                    continue;
                }
                let headings = if anchor.is_some() {
                    match std::fs::read_to_string(&file) {
                        Ok(t) => scan(&t).0,
                        Err(e) => {
                            problems.push(format!(
                                "{shown}:{}: {}: cannot read {}: {e}",
                                link.line,
                                link.target,
                                file.display()
                            ));
                            continue;
                        }
                    }
                } else {
                    Vec::new()
                };
                (file, headings)
            };
            if let Some(anchor) = anchor {
                let known = anchors(&headings);
                if !known.contains(anchor) {
                    let mut near: Vec<&String> = known
                        .iter()
                        .filter(|a| {
                            a.split('-').next() == anchor.split('-').next()
                                || a.contains(anchor)
                                || anchor.contains(a.as_str())
                        })
                        .collect();
                    near.sort();
                    near.truncate(5);
                    problems.push(format!(
                        "{shown}:{}: {}: no heading with anchor #{anchor} in {} (close: {near:?})",
                        link.line,
                        link.target,
                        file.strip_prefix(root).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    problems
}

fn project_pages(root: &Path) -> Vec<PathBuf> {
    let mut pages = vec![root.join("README.md")];
    let docs = root.join("docs");
    let mut in_docs: Vec<PathBuf> = std::fs::read_dir(&docs)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", docs.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    in_docs.sort();
    pages.extend(in_docs);
    pages
}

#[test]
fn every_link_in_readme_and_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let pages = project_pages(root);
    assert!(pages.len() > 1, "no pages found under docs/");
    let problems = broken_links(root, &pages);
    assert!(
        problems.is_empty(),
        "{} broken link(s) in README.md / docs/*.md:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn slugs_follow_githubs_rule() {
    // Anchors as GitHub renders them for headings of this project's pages.
    let cases = [
        ("Memory at batch 512", "memory-at-batch-512"),
        (
            "`mpm-attack` (DESIGN.md contract B)",
            "mpm-attack-designmd-contract-b",
        ),
        (
            "Why cudarc's cuBLAS/cuDNN bindings, not `cublas-sys` / `cudnn-sys`",
            "why-cudarcs-cublascudnn-bindings-not-cublas-sys--cudnn-sys",
        ),
        (
            "2026-11-28: the demo with `--aa-standard`",
            "2026-11-28-the-demo-with---aa-standard",
        ),
        (
            "Precision modes (`--precision f32|tf32|bf16`)",
            "precision-modes---precision-f32tf32bf16",
        ),
        ("snake_case stays", "snake_case-stays"),
    ];
    for (heading, want) in cases {
        assert_eq!(
            slug(&rendered_heading(heading)),
            want,
            "heading {heading:?}"
        );
    }
    let repeated = anchors(&["Tests".into(), "Tests".into(), "Tests".into()]);
    assert!(
        repeated.contains("tests") && repeated.contains("tests-1") && repeated.contains("tests-2")
    );
}

#[test]
fn broken_links_and_anchors_are_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    std::fs::create_dir(root.join("docs")).expect("docs dir");
    std::fs::write(root.join("docs/a.md"), "# A\n\n## Real heading\n").expect("write");
    std::fs::write(
        root.join("README.md"),
        "# Top\n\
         [ok](docs/a.md#real-heading) [ok](#top) ![img](docs/a.md) [web](https://example.com/x)\n\
         `[not a link](missing.md)`\n\
         ```\n[in a fence](missing.md)\n```\n\
         [bad file](docs/missing.md)\n\
         [bad anchor](docs/a.md#no-such-heading)\n\
         [bad own anchor](#nowhere)\n\
         [ref]: docs/also-missing.md\n",
    )
    .expect("write");
    let problems = broken_links(root, &[root.join("README.md"), root.join("docs/a.md")]);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].contains("README.md:7") && problems[0].contains("docs/missing.md"));
    assert!(problems[1].contains("#no-such-heading"));
    assert!(problems[2].contains("#nowhere"));
    assert!(problems[3].contains("also-missing.md"));
}
