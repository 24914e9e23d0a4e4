//! The real binary refuses to start on a bad setting, with one line naming the variable.

use std::process::Command;

fn backroom(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_backroom"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .expect("backroom runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn serve_names_the_missing_or_malformed_variable() {
    let good = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x"),
        ("REDIS_URL", "redis://127.0.0.1:1"),
        ("BACKROOM_ADMIN_TOKEN", "9f2c41d07be85a36c1e4f09b7d2a8e5c"),
        ("BACKROOM_BIND", "127.0.0.1:0"),
    ];
    let cases = [
        ("DATABASE_URL", None, "DATABASE_URL: is not set"),
        (
            "REDIS_URL",
            Some("memcached://x"),
            "REDIS_URL: scheme 'memcached'",
        ),
        (
            "BACKROOM_ADMIN_TOKEN",
            Some("tiny"),
            "BACKROOM_ADMIN_TOKEN: must be at least 32",
        ),
        (
            "BACKROOM_ADMIN_TOKEN",
            // The placeholder of `.env.example`, long enough but not a secret.
            Some("change-me-to-a-long-random-string"),
            "BACKROOM_ADMIN_TOKEN: looks like a placeholder",
        ),
        (
            "BACKROOM_ADMIN_TOKEN",
            Some("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
            "BACKROOM_ADMIN_TOKEN: looks like a placeholder",
        ),
        (
            "BACKROOM_COOKIE_SECURE",
            Some("sometimes"),
            "BACKROOM_COOKIE_SECURE: 'sometimes' is not auto",
        ),
        (
            "BACKROOM_BIND",
            Some("everywhere"),
            "BACKROOM_BIND: 'everywhere' is not",
        ),
    ];
    for (var, value, expected) in cases {
        let mut env: Vec<(&str, &str)> = good.iter().copied().filter(|(k, _)| *k != var).collect();
        if let Some(v) = value {
            env.push((var, v));
        }
        let (code, stderr) = backroom(&["serve"], &env);
        assert_eq!(code, 1, "{var}: exit code; stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{var}: one line, got {stderr:?}");
        assert!(lines[0].contains(expected), "{var}: got {:?}", lines[0]);
    }
}

#[test]
fn migrate_needs_only_the_database_url() {
    let (code, stderr) = backroom(&["migrate"], &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("DATABASE_URL: is not set"), "{stderr}");
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["migrate", "--help"],
        vec!["dev", "--help"],
        vec!["work", "--help"],
        vec!["schedule", "--help"],
        vec!["tenant", "create", "--help"],
        vec!["admin", "create", "--help"],
        vec!["admin", "reset-password", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_backroom"))
            .args(&args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
}
