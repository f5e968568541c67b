//! The outside tools the Django tests drive: the Django project, nginx, process groups
//! for gunicorn's and nginx's workers, and the check that they are installed.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// The Django project.
pub fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("django_app")
}

pub(super) fn nginx_binary() -> Option<PathBuf> {
    let sbin = PathBuf::from("/usr/sbin/nginx");
    if sbin.is_file() {
        return Some(sbin);
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("nginx"))
            .find(|c| c.is_file())
    })
}

/// Whether CI runs us (`CI` set to anything but empty, `0` or `false`): then missing
/// prerequisites are a failure, not a skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `Ok` when python3 can import Django and gunicorn and nginx exists; otherwise what is missing.
pub fn prerequisites() -> Result<(), String> {
    let mut missing = Vec::new();
    let py = Command::new("python3")
        .args(["-c", "import django, gunicorn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !py.is_ok_and(|s| s.success()) {
        missing.push(
            "python3 with Django and gunicorn (pip install -r tests/django_app/requirements.txt)",
        );
    }
    if nginx_binary().is_none() {
        missing.push("nginx (apt-get install nginx-light)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join(" and "))
    }
}

/// `true` when the Django tests can run. Outside CI a missing prerequisite skips the test
/// with a message; under CI it fails it.
pub fn available() -> bool {
    match prerequisites() {
        Ok(()) => true,
        Err(m) if under_ci() => panic!("the Django end-to-end tests need {m} (CI is set)"),
        Err(m) => {
            eprintln!("SKIPPED: the Django end-to-end tests need {m}; CI unset, so skipping");
            false
        }
    }
}

/// A process started in its own process group, killed with its children (gunicorn's and
/// nginx's workers) by `kill -9 -<pgid>`.
pub(super) struct Group {
    child: Child,
}

impl Group {
    pub(super) fn spawn(cmd: &mut Command) -> std::io::Result<Group> {
        cmd.process_group(0).spawn().map(|child| Group { child })
    }

    pub(super) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub(super) fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
