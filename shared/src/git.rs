//! What users hand Fifty that ends up on a `git` command line: repository URLs and branch names.
//! The API checks them when a repository is added or a commit notified, and the agent checks them
//! again before it runs git, so neither side has to trust the other's check. Git treats an
//! argument starting with `-` as an option (`--upload-pack=CMD` runs CMD) and `ext::CMD` as a
//! command to run; both are refused here, and the agent also puts `--` before such arguments.

/// Why a repository URL or branch name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GitInputError {
    /// The URL is not one build hosts may fetch from.
    #[error("url {url:?}: {why}; use https://, http://, ssh://, git://, file://, user@host:path or an absolute path")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The branch name is not a valid git branch.
    #[error("branch {branch:?}: {why}")]
    Branch {
        /// The name as given.
        branch: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Longest branch name accepted.
pub const MAX_BRANCH_LEN: usize = 255;

/// Checks a repository URL: one of the schemes `https`, `http`, `ssh`, `git`, `file`, an scp-like
/// `user@host:path`, or an absolute local path. Nothing starting with `-`, holding control
/// characters, or naming a remote helper (`ext::`, any `transport::`).
pub fn check_repo_url(url: &str) -> Result<(), GitInputError> {
    let refuse = |why| Err(GitInputError::Url { url: url.to_string(), why });
    if url.is_empty() {
        return refuse("empty");
    }
    if url.len() > MAX_URL_LEN {
        return refuse("longer than 2048 bytes");
    }
    if url.starts_with('-') {
        return refuse("starts with '-', which git would read as an option");
    }
    if url.chars().any(char::is_control) {
        return refuse("holds a control character");
    }
    if url.contains("::") {
        return refuse("names a git remote helper (`transport::`), which can run commands");
    }
    if url.starts_with('/') {
        return Ok(());
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        if !["https", "http", "ssh", "git", "file"].contains(&scheme.to_ascii_lowercase().as_str()) {
            return refuse("has a scheme Fifty does not fetch from");
        }
        let authority = rest.split('/').next().unwrap_or_default();
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if authority.starts_with('-') || host.starts_with('-') {
            return refuse("its host starts with '-', which ssh would read as an option");
        }
        if scheme.eq_ignore_ascii_case("file") {
            return if rest.starts_with('/') { Ok(()) } else { refuse("a file:// URL needs an absolute path") };
        }
        if host.is_empty() {
            return refuse("has no host");
        }
        return Ok(());
    }
    // scp-like `[user@]host:path`: a ':' before any '/' (that is how git tells it from a path).
    match url.split_once(':') {
        Some((authority, path)) if !authority.contains('/') && !authority.is_empty() => {
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if host.is_empty() || host.starts_with('-') {
                return refuse("its host is empty or starts with '-', which ssh would read as an option");
            }
            if path.is_empty() {
                return refuse("has no path after ':'");
            }
            Ok(())
        }
        _ => refuse("is a relative path or not a URL"),
    }
}

/// Checks a branch name by git's rules for `refs/heads/<name>` (`git check-ref-format --branch`),
/// and refuses a leading `-`.
pub fn check_branch(branch: &str) -> Result<(), GitInputError> {
    let refuse = |why| Err(GitInputError::Branch { branch: branch.to_string(), why });
    if branch.is_empty() {
        return refuse("empty");
    }
    if branch.len() > MAX_BRANCH_LEN {
        return refuse("longer than 255 bytes");
    }
    if branch.starts_with('-') {
        return refuse("starts with '-', which git would read as an option");
    }
    if branch == "HEAD" || branch == "@" {
        return refuse("not a branch name");
    }
    if let Some(c) = branch.chars().find(|c| c.is_control() || " ~^:?*[\\".contains(*c)) {
        return match c {
            ' ' => refuse("holds a space"),
            c if c.is_control() => refuse("holds a control character"),
            _ => refuse("holds one of ~ ^ : ? * [ \\, which git refuses in branch names"),
        };
    }
    if branch.contains("..") || branch.contains("@{") {
        return refuse("holds \"..\" or \"@{\", which git refuses in branch names");
    }
    if branch.ends_with('.') {
        return refuse("ends with '.'");
    }
    for part in branch.split('/') {
        if part.is_empty() {
            return refuse("has an empty path component (a leading, trailing or double '/')");
        }
        if part.starts_with('.') {
            return refuse("has a component starting with '.'");
        }
        if part.ends_with(".lock") {
            return refuse("has a component ending with \".lock\"");
        }
    }
    Ok(())
}

/// Whether `sha` is a full commit SHA: 40 lower-case hex digits.
pub fn is_full_sha(sha: &str) -> bool {
    sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_build_hosts_may_fetch() {
        for ok in [
            "https://git.example.com/shop.git",
            "http://10.0.0.5/shop",
            "ssh://git@git.example.com:2222/shop.git",
            "git://git.example.com/shop.git",
            "file:///srv/git/shop.git",
            "git@github.com:acme/shop.git",
            "build:repos/shop",
            "/srv/git/shop.git",
            "/tmp/dir with space/shop.git",
        ] {
            assert_eq!(check_repo_url(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn urls_that_would_run_commands_are_refused_with_the_reason() {
        for (bad, why) in [
            ("--upload-pack=touch PWNED", "starts with '-'"),
            ("-u touch PWNED", "starts with '-'"),
            ("ext::sh -c touch% PWNED", "remote helper"),
            ("EXT::sh -c x", "remote helper"),
            ("fd::3", "remote helper"),
            ("https://x/shop\n--upload-pack=x", "control character"),
            ("ssh://-oProxyCommand=touch%20PWNED/x", "starts with '-'"),
            ("ssh://git@-oProxyCommand=x/y", "starts with '-'"),
            ("-oProxyCommand=x:y", "starts with '-'"),
            ("git@-oProxyCommand=x:y", "starts with '-'"),
            ("ftp://example.com/shop", "scheme"),
            ("shop.git", "relative path"),
            ("./shop", "relative path"),
            ("file://relative/x", "absolute path"),
            ("", "empty"),
        ] {
            let err = check_repo_url(bad).expect_err(bad).to_string();
            assert!(err.contains(why) && err.starts_with("url "), "{bad}: {err}");
        }
    }

    #[test]
    fn branches_follow_git_check_ref_format() {
        for ok in ["main", "release/1.2", "feature-x", "v1.0_rc", "a@b"] {
            assert_eq!(check_branch(ok), Ok(()), "{ok}");
        }
        for bad in [
            "--orphan",
            "-b",
            "",
            "HEAD",
            "@",
            "a b",
            "a..b",
            "a@{1}",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            "a\tb",
            "a\nb",
            "/main",
            "main/",
            "a//b",
            ".hidden",
            "a/.b",
            "main.lock",
            "main.",
        ] {
            let err = check_branch(bad).expect_err(bad).to_string();
            assert!(err.starts_with("branch "), "{bad}: {err}");
        }
        assert!(check_branch(&"a".repeat(256)).is_err());
    }

    #[test]
    fn full_shas_are_forty_lower_hex() {
        assert!(is_full_sha("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_full_sha("0123456789ABCDEF0123456789abcdef01234567"));
        assert!(!is_full_sha("--orphan"));
        assert!(!is_full_sha("0123"));
    }
}
