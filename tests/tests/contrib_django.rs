//! `contrib/django` (the `litefs_proxy_django` package): its Python unit tests (the replay
//! middleware against a read-only SQLite database, the system checks, the `LITEFS` settings
//! reader) run with `python3 -m unittest`; the config it prints for the seed's `LITEFS` dict
//! passes `litefs-proxy check`; its pyproject lists the packages that exist. Needs python3
//! with Django: skipped with a message when missing, unless `CI` is set (then it fails).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use litefs_proxy_tests::{cluster::binary, django::under_ci};

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .join("contrib/django")
}

/// Whether python3 can import Django (under CI it must).
fn django() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import django"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !under_ci(),
            "contrib/django's tests need python3 with Django (CI is set): \
             pip install -r tests/django_app/requirements.txt"
        );
        eprintln!("SKIPPED: contrib/django's tests need python3 with Django; CI unset");
    }
    ok
}

fn python(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("python3")
        .args(args)
        .current_dir(contrib())
        .env("PYTHONPATH", contrib())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("DJANGO_SETTINGS_MODULE")
        .envs(env.iter().copied())
        .output()
        .expect("run python3")
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn python_unit_tests_pass() {
    if !django() {
        return;
    }
    let out = python(
        &["-m", "unittest", "discover", "-s", "tests", "-t", "."],
        &[],
    );
    ok(&out, "python3 -m unittest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ran: usize = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no 'Ran N tests' in:\n{stderr}"));
    assert!(ran >= 16, "{ran} tests ran:\n{stderr}");
    assert!(!stderr.contains("skipped"), "no test skips:\n{stderr}");
}

#[test]
fn printed_config_passes_litefs_proxy_check() {
    if !django() {
        return;
    }
    let settings = [("DJANGO_SETTINGS_MODULE", "tests.seed_settings")];
    let toml = ok(
        &python(&["-m", "litefs_proxy_django.config"], &settings),
        "python3 -m litefs_proxy_django.config",
    );
    let command = ok(
        &python(&["-m", "django", "litefs_proxy_config"], &settings),
        "manage.py litefs_proxy_config",
    );
    assert_eq!(toml, command, "the module and the command print the same");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("litefs-proxy.toml");
    fs::write(&file, &toml).expect("write config");
    let mut check = Command::new(binary());
    check.arg("check").arg("--config").arg(&file);
    for (k, _) in std::env::vars() {
        if k.starts_with("LITEFS_PROXY_") {
            check.env_remove(k);
        }
    }
    check.env(
        "LITEFS_PROXY_ELECTION__CLUSTER_SECRET",
        "test-cluster-secret-0123456789",
    );
    let effective = ok(
        &check.output().expect("litefs-proxy check"),
        "litefs-proxy check",
    );
    for line in [
        "node_id = \"node-1\"",
        "primary_redirect_timeout = \"10s\"",
        "target = \"localhost:8000\"",
        "source = \"raft\"",
    ] {
        assert!(effective.contains(line), "{line} in:\n{effective}");
    }
    // A LITEFS dict it cannot take exits 64, naming the key.
    let bad = python(
        &[
            "-c",
            "import sys; from django.conf import settings; \
             settings.configure(LITEFS={'PROXY': {'TARGETS': 'x'}}); \
             from litefs_proxy_django.config import main; sys.exit(main())",
        ],
        &[],
    );
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("TARGETS"));
}

#[test]
fn pyproject_names_packages_that_exist() {
    let text = fs::read_to_string(contrib().join("pyproject.toml")).expect("pyproject.toml");
    let v: toml::Value = toml::from_str(&text).expect("pyproject.toml parses");
    assert_eq!(v["project"]["name"].as_str(), Some("litefs-proxy-django"));
    let packages = v["tool"]["setuptools"]["packages"]
        .as_array()
        .expect("tool.setuptools.packages");
    assert!(packages
        .iter()
        .any(|p| p.as_str() == Some("litefs_proxy_django")));
    for p in packages {
        let dir = contrib().join(p.as_str().expect("a name").replace('.', "/"));
        assert!(dir.join("__init__.py").is_file(), "{}", dir.display());
    }
    for module in ["middleware", "checks", "config", "apps"] {
        assert!(contrib()
            .join(format!("litefs_proxy_django/{module}.py"))
            .is_file());
    }
}
