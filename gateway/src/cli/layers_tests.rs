//! Tests of the configuration layers on a small clap command shaped like the gateway's.

use std::collections::HashMap;

use clap::{Arg, ArgAction, Command, value_parser};

use super::*;

fn command() -> Command {
    Command::new("gw")
        .arg(
            Arg::new("config")
                .long("config")
                .value_parser(value_parser!(PathBuf)),
        )
        .arg(
            Arg::new("check_config")
                .long("check-config")
                .action(ArgAction::SetTrue),
        )
        .arg(
            Arg::new("max_conns")
                .long("max-conns")
                .value_parser(value_parser!(usize)),
        )
        .arg(
            Arg::new("max_message")
                .long("max-message")
                .value_parser(value_parser!(usize))
                .default_value("65536"),
        )
        .arg(
            Arg::new("reuse_port")
                .long("reuse-port")
                .action(ArgAction::SetTrue),
        )
        .arg(
            Arg::new("allow_origin")
                .long("allow-origin")
                .action(ArgAction::Append),
        )
        .arg(Arg::new("publish_token").long("publish-token"))
        .subcommand(Command::new("token"))
}

fn file(text: &str) -> tempfile_path::TempPath {
    tempfile_path::write(text)
}

/// A temporary file removed on drop (no crate needed).
mod tempfile_path {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use std::io::Write;

    pub struct TempPath(pub PathBuf);

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    pub fn write(text: &str) -> TempPath {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "gw-layers-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        TempPath(path)
    }
}

/// Merges the layers for `argv` with the environment `env`, then parses as the binary does.
fn run(argv: &[&str], env: &[(&str, &str)]) -> Result<ArgMatches, String> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cli: Vec<OsString> = std::iter::once("gw")
        .chain(argv.iter().copied())
        .map(OsString::from)
        .collect();
    let args = layered_args(&command(), &cli, &|k| env.get(k).cloned()).map_err(|e| e.0)?;
    command()
        .try_get_matches_from(args)
        .map_err(|e| e.to_string())
}

fn conns(m: &ArgMatches) -> Option<usize> {
    m.get_one::<usize>("max_conns").copied()
}

fn origins(m: &ArgMatches) -> Vec<String> {
    m.get_many::<String>("allow_origin")
        .map(|v| v.cloned().collect())
        .unwrap_or_default()
}

#[test]
fn precedence_is_flag_then_environment_then_file_then_default() {
    let f = file("max-conns = 10\nmax-message = 20\nreuse-port = true\n");
    let path = f.0.to_str().unwrap();
    let m = run(&["--config", path], &[]).unwrap();
    assert_eq!(conns(&m), Some(10));
    assert_eq!(m.get_one::<usize>("max_message"), Some(&20));
    assert!(m.get_flag("reuse_port"));

    let m = run(&["--config", path], &[("GATEWAY_MAX_CONNS", "11")]).unwrap();
    assert_eq!(conns(&m), Some(11), "environment over file");
    assert_eq!(m.get_one::<usize>("max_message"), Some(&20));

    let m = run(
        &["--config", path, "--max-conns", "12"],
        &[("GATEWAY_MAX_CONNS", "11")],
    )
    .unwrap();
    assert_eq!(conns(&m), Some(12), "flag over environment");

    let m = run(&["--config", path], &[("GATEWAY_REUSE_PORT", "false")]).unwrap();
    assert!(
        !m.get_flag("reuse_port"),
        "environment switches a file's flag off"
    );

    let m = run(&[], &[]).unwrap();
    assert_eq!(conns(&m), None);
    assert_eq!(m.get_one::<usize>("max_message"), Some(&65536), "default");
}

#[test]
fn the_file_can_come_from_the_environment() {
    let f = file("max-conns = 7\n");
    let m = run(&[], &[("GATEWAY_CONFIG", f.0.to_str().unwrap())]).unwrap();
    assert_eq!(conns(&m), Some(7));
}

#[test]
fn lists_replace_rather_than_add_up() {
    let f = file("allow-origin = [\"https://a.example\", \"https://b.example\"]\n");
    let path = f.0.to_str().unwrap();
    let m = run(&["--config", path], &[]).unwrap();
    assert_eq!(origins(&m), ["https://a.example", "https://b.example"]);
    let m = run(
        &["--config", path, "--allow-origin", "https://c.example"],
        &[],
    )
    .unwrap();
    assert_eq!(origins(&m), ["https://c.example"]);
    let m = run(
        &["--config", path],
        &[(
            "GATEWAY_ALLOW_ORIGIN",
            "https://d.example, https://e.example",
        )],
    )
    .unwrap();
    assert_eq!(origins(&m), ["https://d.example", "https://e.example"]);
    let one = file("allow-origin = \"https://one.example\"\n");
    let m = run(&["--config", one.0.to_str().unwrap()], &[]).unwrap();
    assert_eq!(origins(&m), ["https://one.example"], "one value for a list");
}

#[test]
fn integers_in_any_toml_form_and_numbers_as_strings() {
    let f = file("max-conns = 0x10\nmax-message = \"1_000\"\n");
    let m = run(&["--config", f.0.to_str().unwrap()], &[]);
    // A string is given to the flag as it is: "1_000" is not a number for the flag.
    let e = m.unwrap_err();
    assert!(e.contains(":2: key 'max-message'"), "{e}");
    let f = file("max-conns = 1_000\nmax-message = \"2000\"\n");
    let m = run(&["--config", f.0.to_str().unwrap()], &[]).unwrap();
    assert_eq!(conns(&m), Some(1000));
    assert_eq!(m.get_one::<usize>("max_message"), Some(&2000));
}

#[test]
fn an_empty_string_leaves_an_optional_value_unset() {
    let f = file("publish-token = \"\"\n");
    let m = run(
        &["--config", f.0.to_str().unwrap()],
        &[("GATEWAY_MAX_CONNS", "")],
    )
    .unwrap();
    assert_eq!(m.get_one::<String>("publish_token"), None);
    assert_eq!(conns(&m), None);
}

/// Every bad file names the file, the line and, for a bad value, the key.
#[test]
fn bad_files_name_the_line_and_the_key() {
    let cases = [
        ("max-conns = 10\nmax-conns = [\n", ":2:"),
        ("\n\nmax-cons = 10\n", ":3: unknown key 'max-cons'"),
        (
            "max-conns = \"many\"\n",
            ":1: key 'max-conns': invalid value 'many'",
        ),
        (
            "max-conns = -1\n",
            ":1: key 'max-conns': invalid value '-1'",
        ),
        (
            "\nreuse-port = 1\n",
            ":2: key 'reuse-port': expected true or false, found integer",
        ),
        (
            "max-conns = [1, 2]\n",
            ":1: key 'max-conns': expected one value, found an array",
        ),
        (
            "allow-origin = [[\"a\"]]\n",
            ":1: key 'allow-origin': expected a string or a number",
        ),
        ("[limits]\nmax-conns = 1\n", ":1: unknown key 'limits'"),
        (
            "max-conns = 1979-05-27\n",
            ":1: key 'max-conns': expected a string or a number",
        ),
        ("help = true\n", ":1: unknown key 'help'"),
        ("config = \"x.toml\"\n", ":1: unknown key 'config'"),
        ("max-conns = 10 11\n", ":1:"),
    ];
    for (text, want) in cases {
        let f = file(text);
        let path = f.0.to_str().unwrap();
        let e = run(&["--config", path], &[]).unwrap_err();
        assert!(e.starts_with(path), "{text:?}: {e}");
        assert!(e.contains(want), "{text:?}: want {want:?} in {e}");
    }
    let e = run(&["--config", "/nonexistent/gw.toml"], &[]).unwrap_err();
    assert!(e.starts_with("/nonexistent/gw.toml: "), "{e}");
}

#[test]
fn bad_environment_values_name_the_variable() {
    let e = run(&[], &[("GATEWAY_MAX_CONNS", "lots")]).unwrap_err();
    assert!(
        e.starts_with("GATEWAY_MAX_CONNS: invalid value 'lots'"),
        "{e}"
    );
    let e = run(&[], &[("GATEWAY_REUSE_PORT", "maybe")]).unwrap_err();
    assert!(
        e.starts_with("GATEWAY_REUSE_PORT: 'maybe' is not true or false"),
        "{e}"
    );
    // A bad value in the file is not an error when a flag overrides it.
    let f = file("max-conns = 10\n");
    let m = run(
        &["--config", f.0.to_str().unwrap(), "--max-conns", "3"],
        &[("GATEWAY_MAX_MESSAGE", "5")],
    )
    .unwrap();
    assert_eq!(conns(&m), Some(3));
    assert_eq!(m.get_one::<usize>("max_message"), Some(&5));
}

#[test]
fn subcommands_and_help_are_left_to_clap() {
    let cli: Vec<OsString> = ["gw", "token"].iter().map(OsString::from).collect();
    let env = |_: &str| Some("99".to_string());
    assert_eq!(layered_args(&command(), &cli, &env).unwrap(), cli);
    let cli: Vec<OsString> = ["gw", "--help"].iter().map(OsString::from).collect();
    assert_eq!(layered_args(&command(), &cli, &env).unwrap(), cli);
}

#[test]
fn the_effective_configuration_reads_back_as_the_same() {
    let f = file(
        "max-conns = 10\nallow-origin = [\"https://a.example\", \"x\\\"y\"]\npublish-token = \"s3cret\"\n",
    );
    let m = run(&["--config", f.0.to_str().unwrap(), "--reuse-port"], &[]).unwrap();
    let shown = effective_toml(&command(), &m, &|_| None, &["publish-token"]);
    assert!(shown.contains("max-conns = 10\n"), "{shown}");
    assert!(shown.contains("max-message = 65536\n"), "{shown}");
    assert!(shown.contains("reuse-port = true\n"), "{shown}");
    assert!(shown.contains("publish-token = \"<hidden>\"\n"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(!shown.contains("check-config"), "{shown}");
    // Read back (without the secret), it gives the same values.
    let again = file(&shown.replace("publish-token = \"<hidden>\"\n", ""));
    let m2 = run(&["--config", again.0.to_str().unwrap()], &[]).unwrap();
    assert_eq!(conns(&m2), Some(10));
    assert_eq!(origins(&m2), ["https://a.example", "x\"y"]);
    assert!(m2.get_flag("reuse_port"));
    let resolved = effective_toml(
        &command(),
        &run(&[], &[]).unwrap(),
        &|k| (k == "max-conns").then(|| "4000".to_string()),
        &[],
    );
    assert!(resolved.contains("max-conns = 4000\n"), "{resolved}");
    assert!(resolved.contains("publish-token = \"\"\n"), "{resolved}");
    assert!(resolved.contains("allow-origin = []\n"), "{resolved}");
}

#[test]
fn passwords_in_urls_are_not_shown() {
    assert_eq!(
        super::without_password("redis://:s3cret@10.0.0.5:6379/0"),
        "redis://***@10.0.0.5:6379/0"
    );
    assert_eq!(
        super::without_password("redis://10.0.0.5:6379"),
        "redis://10.0.0.5:6379"
    );
    assert_eq!(
        super::without_password("https://a.example/x@y"),
        "https://a.example/x@y"
    );
}
