//! Key paths as etcd normalises them: `path.Clean(path.Join("/", key))` of Go.

/// Go's `path.Clean` of `"/" + p`: an absolute path without `.`, `..`, repeated or
/// trailing slashes (`""` and `"/"` give `"/"`).
pub fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    if parts.is_empty() {
        return "/".to_string();
    }
    let mut out = String::with_capacity(p.len() + 1);
    for s in parts {
        out.push('/');
        out.push_str(s);
    }
    out
}

/// The components of a clean path (`/a/b` → `["a", "b"]`).
pub fn components(clean_path: &str) -> impl Iterator<Item = &str> {
    clean_path.split('/').filter(|s| !s.is_empty())
}

/// Go's `path.Join(dir, name)` for a clean `dir`.
pub fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cleans_like_go() {
        assert_eq!(clean(""), "/");
        assert_eq!(clean("/"), "/");
        assert_eq!(clean("foo/"), "/foo");
        assert_eq!(clean("//a//b/./c/.."), "/a/b");
        assert_eq!(clean("/../.."), "/");
        assert_eq!(join("/", "a"), "/a");
        assert_eq!(join("/a", "b"), "/a/b");
    }

    proptest! {
        #[test]
        fn clean_is_idempotent(p in "[a-z./_]{0,40}") {
            let c = clean(&p);
            prop_assert!(c.starts_with('/'));
            prop_assert_eq!(clean(&c), c.clone());
            prop_assert!(!c.contains("//"));
        }
    }
}
