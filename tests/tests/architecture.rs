//! Architecture rules of the workspace, checked on the source of every member crate:
//!
//! - no cycle between the modules of a crate (a module is a source file; an edge is any path
//!   in it that names another module of the same crate, through `crate::`, `super::`,
//!   `self::` or a child module's name, resolved to the longest module prefix that exists);
//! - no source file over [`MAX_LINES`] lines, not counting `#[cfg(test)]` items;
//! - no inherent `impl Type` outside the module that defines `Type` (trait impls may be
//!   anywhere).
//!
//! Unit-test code (`#[cfg(test)]` items, `tests` modules) is not part of the architecture and
//! is skipped. `architecture_report` (ignored by default) prints the report without failing:
//! `cargo test -p store-tests --test architecture -- --ignored --nocapture`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use proc_macro2::{TokenStream, TokenTree};
use syn::spanned::Spanned;
use syn::visit::{self, Visit};

/// Longest a source file may be, in lines outside `#[cfg(test)]` items.
const MAX_LINES: usize = 700;

/// A module's path inside its crate tree (empty for the crate root).
type ModPath = Vec<String>;

/// A crate's sources: path relative to the crate directory (`src/lib.rs`) -> text.
type Files = BTreeMap<String, String>;

#[test]
fn architecture_rules_hold() {
    let report = workspace_report();
    println!("{}", report.text);
    assert!(report.violating.is_empty(), "architecture violations in {:?} (report above)", report.violating);
}

#[test]
#[ignore = "prints the report only; run with --ignored --nocapture"]
fn architecture_report() {
    println!("{}", workspace_report().text);
}

struct WorkspaceReport {
    text: String,
    /// Crates with at least one violation.
    violating: Vec<String>,
}

fn workspace_report() -> WorkspaceReport {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("workspace Cargo.toml");
    let mut text = String::new();
    let mut violating = Vec::new();
    for member in workspace_members(&manifest) {
        let dir = root.join(&member);
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).expect("member Cargo.toml");
        let name = package_name(&cargo).unwrap_or_else(|| member.clone());
        let findings = analyze_crate(&member, &read_sources(&dir));
        if findings.is_empty() {
            let _ = writeln!(text, "{name}: ok");
            continue;
        }
        violating.push(name.clone());
        let _ = writeln!(text, "{name}: {} violation(s)", findings.count());
        findings.write(&mut text);
    }
    WorkspaceReport { text, violating }
}

/// The `members = [...]` of the workspace manifest.
fn workspace_members(manifest: &str) -> Vec<String> {
    let start = manifest.find("members").expect("workspace members");
    let list = &manifest[start..];
    let list = &list[list.find('[').expect("members list")..=list.find(']').expect("members list end")];
    list.split('"').skip(1).step_by(2).map(str::to_owned).collect()
}

/// `name = "..."` of a member's `[package]`.
fn package_name(manifest: &str) -> Option<String> {
    let package = &manifest[manifest.find("[package]")?..];
    let line = package.lines().find(|l| l.trim_start().starts_with("name"))?;
    Some(line.split('"').nth(1)?.to_owned())
}

/// Every `.rs` file under `dir/src`, keyed by its path relative to `dir`.
fn read_sources(dir: &Path) -> Files {
    fn walk(dir: &Path, base: &Path, out: &mut Files) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, base, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(base).expect("under the crate").to_string_lossy().into_owned();
                out.insert(rel, std::fs::read_to_string(&path).expect("readable source"));
            }
        }
    }
    let mut files = Files::new();
    walk(&dir.join("src"), dir, &mut files);
    files
}

#[derive(Debug, Default)]
struct Findings {
    cycles: Vec<String>,
    oversized: Vec<String>,
    stray_impls: Vec<String>,
    errors: Vec<String>,
}

impl Findings {
    fn count(&self) -> usize {
        self.cycles.len() + self.oversized.len() + self.stray_impls.len() + self.errors.len()
    }

    fn is_empty(&self) -> bool {
        self.count() == 0
    }

    fn write(&self, out: &mut String) {
        for (title, lines) in [
            ("module cycles", &self.cycles),
            ("files over 700 non-test lines", &self.oversized),
            ("inherent impls outside the type's module", &self.stray_impls),
            ("unreadable sources", &self.errors),
        ] {
            if !lines.is_empty() {
                let _ = writeln!(out, "  {title}:");
                for line in lines {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
    }
}

/// The crate roots among `files`: the library, the main binary and `src/bin/*`.
fn crate_roots(files: &Files) -> Vec<(String, String)> {
    let mut roots = Vec::new();
    for (name, file) in [("lib", "src/lib.rs"), ("bin", "src/main.rs")] {
        if files.contains_key(file) {
            roots.push((name.to_owned(), file.to_owned()));
        }
    }
    for file in files.keys() {
        let Some(rest) = file.strip_prefix("src/bin/") else { continue };
        let bin = match rest.split_once('/') {
            None => rest.strip_suffix(".rs"),
            Some((bin, "main.rs")) => Some(bin),
            Some(_) => None,
        };
        if let Some(bin) = bin {
            roots.push((format!("bin {bin}"), file.clone()));
        }
    }
    roots
}

/// Checks every module tree (library, binaries) of one crate. `crate_dir` prefixes the
/// file names in the findings.
fn analyze_crate(crate_dir: &str, files: &Files) -> Findings {
    let mut findings = Findings::default();
    for (tree_name, root) in crate_roots(files) {
        let tree = Tree::load(files, &root, &mut findings.errors, crate_dir);
        tree.check(&tree_name, crate_dir, &mut findings);
    }
    findings
}

/// One parsed source file of a module tree.
#[derive(Debug)]
struct Module {
    file: String,
    /// Paths it names, with the (possibly inline) module they appear in.
    refs: Vec<Ref>,
    /// Structs, enums and unions it defines.
    types: BTreeSet<String>,
    /// Inherent impls: the type's name and the line.
    inherent_impls: Vec<(String, usize)>,
    /// Lines outside `#[cfg(test)]` items.
    lines: usize,
}

#[derive(Debug)]
struct Ref {
    scope: ModPath,
    segments: Vec<String>,
    line: usize,
}

/// The modules of one crate root (a library or a binary).
#[derive(Debug, Default)]
struct Tree {
    modules: BTreeMap<ModPath, Module>,
    /// Inline (non-test) modules: names that resolve like modules but belong to their file.
    inline: BTreeSet<ModPath>,
}

impl Tree {
    fn load(files: &Files, root: &str, errors: &mut Vec<String>, crate_dir: &str) -> Self {
        let mut tree = Tree::default();
        let root_dir = root.rsplit_once('/').map_or("", |(d, _)| d).to_owned();
        let mut queue = vec![(ModPath::new(), root.to_owned(), root_dir)];
        while let Some((path, file, child_dir)) = queue.pop() {
            let Some(text) = files.get(&file) else { continue };
            let ast = match syn::parse_file(text) {
                Ok(ast) => ast,
                Err(e) => {
                    errors.push(format!("{crate_dir}/{file}: {e}"));
                    continue;
                }
            };
            if is_test(&ast.attrs) {
                continue;
            }
            let mut collector = Collector { scope: path.clone(), ..Collector::default() };
            collector.visit_file(&ast);
            for (scope, name) in collector.mod_decls {
                // `mod x;` inside inline `mod a { }` lives in `a/x.rs` under the file's
                // directory for children.
                let inline_dirs = &scope[path.len()..];
                let mut dir = child_dir.clone();
                for d in inline_dirs {
                    dir = format!("{dir}/{d}");
                }
                let mut child = scope.clone();
                child.push(name.clone());
                let flat = format!("{dir}/{name}.rs");
                let nested = format!("{dir}/{name}/mod.rs");
                if files.contains_key(&flat) {
                    queue.push((child, flat, format!("{dir}/{name}")));
                } else if files.contains_key(&nested) {
                    queue.push((child, nested, format!("{dir}/{name}")));
                }
            }
            tree.inline.extend(collector.inline_mods);
            let lines = text.lines().count().saturating_sub(collector.test_lines);
            tree.modules.insert(
                path,
                Module {
                    file,
                    refs: collector.refs,
                    types: collector.types,
                    inherent_impls: collector.inherent_impls,
                    lines,
                },
            );
        }
        tree
    }

    /// The module a path written in `scope` names, if it names one of this tree.
    fn resolve(&self, scope: &[String], segments: &[String]) -> Option<ModPath> {
        let first = segments.first()?;
        let mut full: ModPath = match first.as_str() {
            "crate" => segments[1..].to_vec(),
            "self" => scope.iter().chain(&segments[1..]).cloned().collect(),
            "super" => {
                let supers = segments.iter().take_while(|s| *s == "super").count();
                let base = scope.get(..scope.len().checked_sub(supers)?)?;
                base.iter().chain(&segments[supers..]).cloned().collect()
            }
            _ => {
                let mut child = scope.to_vec();
                child.push(first.clone());
                if !self.modules.contains_key(&child) && !self.inline.contains(&child) {
                    return None;
                }
                scope.iter().chain(segments).cloned().collect()
            }
        };
        while !self.modules.contains_key(&full) {
            full.pop()?;
        }
        Some(full)
    }

    /// The file module that holds `scope` (itself, or the file of an inline module).
    fn file_module(&self, scope: &[String]) -> ModPath {
        let mut path = scope.to_vec();
        while !self.modules.contains_key(&path) && path.pop().is_some() {}
        path
    }

    /// Module -> modules it names, with one example reference per edge.
    fn edges(&self) -> BTreeMap<ModPath, BTreeMap<ModPath, (String, usize)>> {
        let mut edges: BTreeMap<ModPath, BTreeMap<ModPath, (String, usize)>> = BTreeMap::new();
        for (from, module) in &self.modules {
            let out = edges.entry(from.clone()).or_default();
            for r in &module.refs {
                let Some(to) = self.resolve(&r.scope, &r.segments) else { continue };
                if to != self.file_module(&r.scope) {
                    out.entry(to).or_insert_with(|| (r.segments.join("::"), r.line));
                }
            }
        }
        edges
    }

    fn check(&self, tree_name: &str, crate_dir: &str, findings: &mut Findings) {
        let name = |path: &ModPath| if path.is_empty() { format!("({tree_name} root)") } else { path.join("::") };
        let edges = self.edges();
        for component in strongly_connected(&edges) {
            let members: BTreeSet<&ModPath> = component.iter().collect();
            let names: Vec<String> = component.iter().map(name).collect();
            let mut text = format!("[{tree_name}] {}", names.join(", "));
            for from in &component {
                // One edge out of each member that stays in the cycle.
                if let Some((to, (path, line))) = edges[from].iter().find(|(to, _)| members.contains(to)) {
                    let file = &self.modules[from].file;
                    let _ =
                        write!(text, "\n        {} -> {}: {crate_dir}/{file}:{line} `{path}`", name(from), name(to));
                }
            }
            findings.cycles.push(text);
        }
        let mut owners: HashMap<&str, Vec<&ModPath>> = HashMap::new();
        for (path, module) in &self.modules {
            for t in &module.types {
                owners.entry(t).or_default().push(path);
            }
        }
        for (path, module) in &self.modules {
            if module.lines > MAX_LINES {
                findings.oversized.push(format!("{crate_dir}/{}: {} lines", module.file, module.lines));
            }
            for (ty, line) in &module.inherent_impls {
                let Some(defined_in) = owners.get(ty.as_str()) else { continue };
                if !defined_in.contains(&path) {
                    let homes: Vec<String> = defined_in.iter().map(|p| name(p)).collect();
                    findings.stray_impls.push(format!(
                        "{crate_dir}/{}:{line} `impl {ty}`, defined in {}",
                        module.file,
                        homes.join(", ")
                    ));
                }
            }
        }
    }
}

/// Strongly connected components of more than one module (Tarjan's algorithm).
fn strongly_connected(edges: &BTreeMap<ModPath, BTreeMap<ModPath, (String, usize)>>) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        edges: &'a BTreeMap<ModPath, BTreeMap<ModPath, (String, usize)>>,
        index: HashMap<&'a ModPath, usize>,
        low: HashMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    fn connect<'a>(s: &mut State<'a>, v: &'a ModPath) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        let edges = s.edges;
        for w in edges.get(v).into_iter().flat_map(BTreeMap::keys) {
            if !s.index.contains_key(w) {
                connect(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v) {
            connect(&mut state, v);
        }
    }
    state.found.sort();
    state.found
}

/// `#[cfg(test)]` (or `#[cfg(all(test, ...))]`): unit-test code.
fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta.require_list().is_ok_and(|l| {
                let text = l.tokens.to_string();
                text.split(|c: char| !c.is_alphanumeric() && c != '_').any(|w| w == "test") && !text.contains("not")
            })
    })
}

fn line_span(node: &impl Spanned) -> usize {
    let span = node.span();
    span.end().line.saturating_sub(span.start().line) + 1
}

/// Walks one file: the paths it names, its module declarations, types and inherent impls.
#[derive(Debug, Default)]
struct Collector {
    /// Module the visitor is in: the file's, or an inline module inside it.
    scope: ModPath,
    refs: Vec<Ref>,
    mod_decls: Vec<(ModPath, String)>,
    inline_mods: Vec<ModPath>,
    types: BTreeSet<String>,
    inherent_impls: Vec<(String, usize)>,
    test_lines: usize,
}

impl Collector {
    fn push_ref(&mut self, segments: Vec<String>, line: usize) {
        if !segments.is_empty() {
            self.refs.push(Ref { scope: self.scope.clone(), segments, line });
        }
    }

    /// Paths (`a::b::c`) in a macro's tokens, which syn does not parse.
    fn macro_paths(&mut self, tokens: TokenStream) {
        let mut current: Vec<String> = Vec::new();
        let mut line = 0;
        let mut colons = 0;
        for token in tokens {
            match token {
                TokenTree::Ident(ident) if current.is_empty() || colons == 2 => {
                    if current.is_empty() {
                        line = ident.span().start().line;
                    }
                    current.push(ident.to_string());
                    colons = 0;
                    continue;
                }
                TokenTree::Punct(p) if p.as_char() == ':' && !current.is_empty() && colons < 2 => {
                    colons += 1;
                    continue;
                }
                TokenTree::Group(group) => self.macro_paths(group.stream()),
                _ => {}
            }
            self.flush_macro_path(&mut current, line);
            colons = 0;
        }
        self.flush_macro_path(&mut current, line);
    }

    fn flush_macro_path(&mut self, current: &mut Vec<String>, line: usize) {
        let path = std::mem::take(current);
        if path.len() > 1 {
            self.push_ref(path, line);
        }
    }
}

fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let leaf = |prefix: &Vec<String>, ident: &syn::Ident| {
        let mut path = prefix.clone();
        if ident != "self" {
            path.push(ident.to_string());
        }
        path
    };
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => out.push(leaf(prefix, &n.ident)),
        syn::UseTree::Rename(r) => out.push(leaf(prefix, &r.ident)),
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| use_paths(t, prefix, out)),
    }
}

impl<'ast> Visit<'ast> for Collector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Union(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            _ => return visit::visit_item(self, item),
        };
        if is_test(attrs) {
            self.test_lines += line_span(item);
        } else {
            visit::visit_item(self, item);
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let attrs = match item {
            syn::ImplItem::Const(i) => &i.attrs,
            syn::ImplItem::Fn(i) => &i.attrs,
            syn::ImplItem::Type(i) => &i.attrs,
            syn::ImplItem::Macro(i) => &i.attrs,
            _ => return visit::visit_impl_item(self, item),
        };
        if is_test(attrs) {
            self.test_lines += line_span(item);
        } else {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if item.ident == "tests" {
            self.test_lines += line_span(item);
            return;
        }
        let name = item.ident.to_string();
        match &item.content {
            None => self.mod_decls.push((self.scope.clone(), name)),
            Some((_, items)) => {
                self.scope.push(name);
                self.inline_mods.push(self.scope.clone());
                items.iter().for_each(|i| self.visit_item(i));
                self.scope.pop();
            }
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if item.leading_colon.is_some() {
            return;
        }
        let mut paths = Vec::new();
        use_paths(&item.tree, &mut Vec::new(), &mut paths);
        let line = item.span().start().line;
        for path in paths {
            self.push_ref(path, line);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        // A module is named by a path of two segments or more (`report.x()` is a variable).
        if path.leading_colon.is_none() && path.segments.len() > 1 {
            let segments = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.push_ref(segments, path.span().start().line);
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.macro_paths(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }

    fn visit_item_struct(&mut self, item: &'ast syn::ItemStruct) {
        self.types.insert(item.ident.to_string());
        visit::visit_item_struct(self, item);
    }

    fn visit_item_enum(&mut self, item: &'ast syn::ItemEnum) {
        self.types.insert(item.ident.to_string());
        visit::visit_item_enum(self, item);
    }

    fn visit_item_union(&mut self, item: &'ast syn::ItemUnion) {
        self.types.insert(item.ident.to_string());
        visit::visit_item_union(self, item);
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        if item.trait_.is_none()
            && let syn::Type::Path(ty) = &*item.self_ty
            && let Some(last) = ty.path.segments.last()
        {
            self.inherent_impls.push((last.ident.to_string(), item.span().start().line));
        }
        visit::visit_item_impl(self, item);
    }
}

// Unit tests of the checker itself, on small crates written inline.

fn sources(files: &[(&str, &str)]) -> Files {
    files.iter().map(|(path, text)| ((*path).to_owned(), (*text).to_owned())).collect()
}

#[test]
fn a_use_cycle_between_siblings_is_found() {
    let files = sources(&[
        ("src/lib.rs", "mod a; mod b; mod c;"),
        ("src/a.rs", "use crate::{b::Bee, c};\npub struct A;"),
        ("src/b.rs", "pub struct Bee;\nfn f() -> crate::a::A { crate::a::A }"),
        ("src/c.rs", "pub fn g() {}"),
    ]);
    let findings = analyze_crate("x", &files);
    assert_eq!(findings.cycles.len(), 1, "{findings:?}");
    assert!(findings.cycles[0].starts_with("[lib] a, b"), "{findings:?}");
    assert!(findings.cycles[0].contains("x/src/b.rs:2 `crate::a::A`"), "{findings:?}");
}

#[test]
fn a_child_naming_its_parent_back_is_a_cycle() {
    let files = sources(&[
        ("src/lib.rs", "pub mod cluster;"),
        ("src/cluster.rs", "mod pull;\npub struct Cluster;\nfn f() { pull::start(); }"),
        ("src/cluster/pull.rs", "pub fn start() { let _ = super::Cluster; }"),
    ]);
    let findings = analyze_crate("x", &files);
    assert_eq!(findings.cycles.len(), 1, "{findings:?}");
    assert!(findings.cycles[0].starts_with("[lib] cluster, cluster::pull"), "{findings:?}");
}

#[test]
fn paths_resolve_to_the_longest_existing_module() {
    let files = sources(&[
        ("src/lib.rs", "pub mod cluster; pub mod other;"),
        ("src/cluster.rs", "pub mod pull;"),
        ("src/cluster/pull.rs", "pub struct PullStart;"),
        ("src/other.rs", "fn f() { format!(\"{:?}\", crate::cluster::pull::PullStart); }"),
    ]);
    let tree = Tree::load(&files, "src/lib.rs", &mut Vec::new(), "x");
    let edges = tree.edges();
    let pull = vec!["cluster".to_owned(), "pull".to_owned()];
    assert!(edges[&vec!["other".to_owned()]].contains_key(&pull), "{edges:?}");
    let via_super = tree.resolve(&pull, &["super".into(), "missing".into(), "X".into()]);
    assert_eq!(via_super, Some(vec!["cluster".to_owned()]));
}

#[test]
fn test_code_and_declarations_are_not_edges() {
    let files = sources(&[
        ("src/lib.rs", "mod a; mod b;"),
        ("src/a.rs", "fn f() { crate::b::g(); }\n#[cfg(test)]\nmod tests {\n    use crate::a::f;\n}\n"),
        ("src/b.rs", "pub fn g() {}\n#[cfg(test)]\nfn h() { crate::a::f(); }\n"),
    ]);
    let findings = analyze_crate("x", &files);
    assert!(findings.is_empty(), "{findings:?}");
    let tree = Tree::load(&files, "src/lib.rs", &mut Vec::new(), "x");
    assert_eq!(tree.modules[&vec!["a".to_owned()]].lines, 1);
}

#[test]
fn trait_impls_are_allowed_anywhere_but_inherent_impls_are_not() {
    let files = sources(&[
        ("src/lib.rs", "mod a; mod b;"),
        ("src/a.rs", "pub struct A<T>(T);\nimpl<T> A<T> { fn new() {} }"),
        (
            "src/b.rs",
            "impl<T> Clone for crate::a::A<T> { fn clone(&self) -> Self { todo!() } }\nimpl<T> crate::a::A<T> {}",
        ),
    ]);
    let findings = analyze_crate("x", &files);
    assert_eq!(findings.stray_impls, ["x/src/b.rs:2 `impl A`, defined in a"], "{findings:?}");
}

#[test]
fn long_files_count_only_non_test_lines() {
    let long = "fn f() {}\n".repeat(MAX_LINES + 1);
    let with_tests = format!("{}#[cfg(test)]\nmod tests {{\n{}}}\n", "fn f() {}\n".repeat(MAX_LINES), long);
    let files = sources(&[("src/lib.rs", "mod a; mod b;"), ("src/a.rs", &long), ("src/b.rs", &with_tests)]);
    let findings = analyze_crate("x", &files);
    assert_eq!(findings.oversized, [format!("x/src/a.rs: {} lines", MAX_LINES + 1)], "{findings:?}");
}

#[test]
fn workspace_members_are_read_from_the_manifest() {
    let manifest = "[workspace]\nresolver = \"3\"\nmembers = [\"a\", \"b/c\"]\n\n[workspace.package]\n";
    assert_eq!(workspace_members(manifest), ["a", "b/c"]);
    assert_eq!(package_name("[package]\nname = \"store-x\"\n").as_deref(), Some("store-x"));
    let files =
        sources(&[("src/lib.rs", ""), ("src/bin/tool.rs", ""), ("src/bin/big/main.rs", ""), ("src/bin/big/x.rs", "")]);
    let roots: Vec<String> = crate_roots(&files).into_iter().map(|(n, _)| n).collect();
    assert_eq!(roots, ["lib", "bin big", "bin tool"]);
}
