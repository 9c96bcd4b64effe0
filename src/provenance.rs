//! Where a result came from: the code's git commit, recorded beside every run's results.

/// The commit of the code that runs: `FULLBATCH_GIT_COMMIT` when set (for binaries copied to
/// machines without the repository), else `git rev-parse HEAD` with `-dirty` appended when
/// tracked files have uncommitted changes, else `unknown`.
pub fn git_commit() -> String {
    if let Ok(c) = std::env::var("FULLBATCH_GIT_COMMIT")
        && !c.is_empty()
    {
        return c;
    }
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).output();
    match out {
        Ok(o) if o.status.success() => {
            let mut commit = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let dirty = std::process::Command::new("git")
                .args(["status", "--porcelain", "--untracked-files=no"])
                .output()
                .map(|s| !s.stdout.is_empty())
                .unwrap_or(false);
            if dirty {
                commit.push_str("-dirty");
            }
            commit
        }
        _ => "unknown".into(),
    }
}
