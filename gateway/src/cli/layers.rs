//! Configuration in layers: a flag on the command line, else `GATEWAY_<FLAG>` in the
//! environment, else its key in the `--config` TOML file, else the built-in default.
//!
//! This is generic over a clap [`Command`]: every long flag is a file key of the same name and
//! an environment variable ([`env_name`]), so a new flag needs nothing here. The layers are
//! merged into one argument list (for each flag the command line does not give, the value from
//! the environment or else the file, as `--flag=value`), which clap then parses as usual: one
//! parser, one set of checks, one set of defaults. Each value from the file or the environment
//! is first checked alone, so that an error names where it came from: `FILE:LINE: key
//! 'max-conns': ...` or `GATEWAY_MAX_CONNS: ...`.
//!
//! Value forms. File: a flag is `true` or `false`; a repeatable flag takes an array (or one
//! value); a number may be an integer or a string; an empty string leaves an optional value
//! unset. Environment: a flag is `true/false`, `1/0`, `yes/no` or `on/off`; a repeatable flag
//! takes values separated by commas.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};
use toml::de::{DeTable, DeValue};

/// The flag naming the configuration file.
pub const CONFIG_FLAG: &str = "config";

/// Long flags that are not configuration: never keys, never from the environment.
const NOT_KEYS: &[&str] = &[CONFIG_FLAG, "check-config", "help", "version"];

/// Why the layers could not be merged: the message names the file and line, or the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerError(pub String);

impl fmt::Display for LayerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LayerError {}

/// The environment variable for a flag: `max-conns` is `GATEWAY_MAX_CONNS`.
pub fn env_name(key: &str) -> String {
    format!("GATEWAY_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// What a source says of one flag.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Given {
    /// A flag without a value (`--reuse-port`): on or off.
    Switch(bool),
    /// Values (one, or several for a repeatable flag).
    Values(Vec<String>),
    /// An empty value: the flag is left unset.
    Unset,
}

impl Given {
    fn to_args(&self, long: &str) -> Vec<OsString> {
        match self {
            Given::Switch(true) => vec![format!("--{long}").into()],
            Given::Switch(false) | Given::Unset => Vec::new(),
            Given::Values(vs) => vs.iter().map(|v| format!("--{long}={v}").into()).collect(),
        }
    }
}

/// The argument list to parse: `cli` (program name first) with, for every flag it does not
/// give, the value from the environment (`env` looks a variable up) or else from the
/// configuration file (`--config`, or `GATEWAY_CONFIG`). A command line clap itself refuses,
/// or one asking for help or a subcommand, is returned as it is, for clap to answer.
pub fn layered_args(
    cmd: &Command,
    cli: &[OsString],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<OsString>, LayerError> {
    let Ok(matches) = cmd.clone().try_get_matches_from(cli) else {
        return Ok(cli.to_vec());
    };
    if matches.subcommand().is_some() {
        return Ok(cli.to_vec());
    }
    let from_cli =
        |arg: &Arg| matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine);
    let file = match config_path(cmd, &matches, env) {
        Some(path) => read_file(cmd, &path)?,
        None => Vec::new(),
    };
    let program = cli.first().cloned().unwrap_or_else(|| "gateway".into());
    let mut out = vec![program.clone()];
    for arg in keys(cmd) {
        if from_cli(arg) {
            continue;
        }
        let long = arg.get_long().unwrap_or_default();
        let var = env_name(long);
        let given = match env(&var).map(|v| from_env(arg, &v)) {
            Some(Ok(g)) => {
                check_alone(cmd, &program, long, &g)
                    .map_err(|e| LayerError(format!("{var}: {e}")))?;
                Some(g)
            }
            Some(Err(e)) => return Err(LayerError(format!("{var}: {e}"))),
            None => file.iter().find(|(k, _)| k == long).map(|(_, g)| g.clone()),
        };
        if let Some(g) = given {
            out.extend(g.to_args(long));
        }
    }
    out.extend(cli.iter().skip(1).cloned());
    Ok(out)
}

/// The flags that are configuration keys, in the order `--help` shows them.
fn keys(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| !NOT_KEYS.contains(&l)))
}

fn config_path(
    cmd: &Command,
    matches: &ArgMatches,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<PathBuf> {
    let has_flag = cmd
        .get_arguments()
        .any(|a| a.get_long() == Some(CONFIG_FLAG));
    if !has_flag {
        return None;
    }
    if let Ok(Some(p)) = matches.try_get_one::<PathBuf>(CONFIG_FLAG) {
        return Some(p.clone());
    }
    env(&env_name(CONFIG_FLAG))
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Reads and checks the configuration file: each key with what it gives.
fn read_file(cmd: &Command, path: &PathBuf) -> Result<Vec<(String, Given)>, LayerError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| LayerError(format!("{shown}: {e}")))?;
    parse_file(cmd, &shown.to_string(), &text)
}

/// Parses and checks configuration text read from `name`; errors say `name:LINE: ...`.
fn parse_file(cmd: &Command, name: &str, text: &str) -> Result<Vec<(String, Given)>, LayerError> {
    let program = OsString::from(cmd.get_name());
    let table = DeTable::parse(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        LayerError(format!("{name}:{line}: {}", e.message().trim_end()))
    })?;
    let mut entries: Vec<_> = table.into_inner().into_iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let mut out = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let line = line_of(text, key.span().start);
        let key = key.into_inner().into_owned();
        let at = |msg: String| LayerError(format!("{name}:{line}: {msg}"));
        let Some(arg) = keys(cmd).find(|a| a.get_long() == Some(key.as_str())) else {
            return Err(at(format!(
                "unknown key '{key}' (keys are the long flags: see --help)"
            )));
        };
        let given = from_toml(arg, value.get_ref()).map_err(|e| at(format!("key '{key}': {e}")))?;
        check_alone(cmd, &program, &key, &given).map_err(|e| at(format!("key '{key}': {e}")))?;
        out.push((key, given));
    }
    Ok(out)
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn takes_values(arg: &Arg) -> bool {
    !matches!(
        arg.get_action(),
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
    )
}

fn repeatable(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

fn from_toml(arg: &Arg, value: &DeValue<'_>) -> Result<Given, String> {
    if !takes_values(arg) {
        return match value {
            DeValue::Boolean(b) => Ok(Given::Switch(*b)),
            other => Err(format!(
                "expected true or false, found {}",
                other.type_str()
            )),
        };
    }
    match value {
        DeValue::Array(items) if repeatable(arg) => {
            let values = items
                .iter()
                .map(|v| scalar(v.get_ref()))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Given::Values(values))
        }
        DeValue::Array(_) => Err("expected one value, found an array".into()),
        v => match scalar(v)? {
            s if s.is_empty() && !repeatable(arg) => Ok(Given::Unset),
            s => Ok(Given::Values(vec![s])),
        },
    }
}

/// A TOML scalar as the text a flag would be given.
fn scalar(value: &DeValue<'_>) -> Result<String, String> {
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(i) => i128::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map(|n| n.to_string())
            .map_err(|e| format!("integer {i}: {e}")),
        DeValue::Float(f) => Ok(f.as_str().to_owned()),
        DeValue::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            other.type_str()
        )),
    }
}

fn from_env(arg: &Arg, value: &str) -> Result<Given, String> {
    if !takes_values(arg) {
        return match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Given::Switch(true)),
            "0" | "false" | "no" | "off" | "" => Ok(Given::Switch(false)),
            _ => Err(format!("'{value}' is not true or false")),
        };
    }
    if repeatable(arg) {
        let values: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect();
        return Ok(Given::Values(values));
    }
    if value.is_empty() {
        return Ok(Given::Unset);
    }
    Ok(Given::Values(vec![value.to_owned()]))
}

/// Parses one flag's values alone, so that a bad one is reported with its source. Errors
/// that depend on other flags (one requiring another) are left to the final parse.
fn check_alone(cmd: &Command, program: &OsString, long: &str, given: &Given) -> Result<(), String> {
    use clap::error::ErrorKind::*;
    let argv = std::iter::once(program.clone()).chain(given.to_args(long));
    match cmd.clone().try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            InvalidValue | ValueValidation | UnknownArgument | InvalidUtf8
            | WrongNumberOfValues | TooManyValues | NoEquals => Err(first_line(&e)),
            _ => Ok(()),
        },
    }
}

/// A clap error's first line, without its `error: ` prefix.
fn first_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// The effective configuration as TOML, every key in `--help` order, from the final parse.
/// `resolved` gives the value of a key that has no default in clap (computed at start, like
/// the number of workers); keys in `secrets` are shown as `"<hidden>"` when set, and a URL's
/// password (`--bus redis://:PASSWORD@host`) as `***`.
pub fn effective_toml(
    cmd: &Command,
    matches: &ArgMatches,
    resolved: &dyn Fn(&str) -> Option<String>,
    secrets: &[&str],
) -> String {
    let mut out = String::from(
        "# The effective configuration: flags > GATEWAY_* environment > --config file > defaults.\n",
    );
    for arg in keys(cmd) {
        let long = arg.get_long().unwrap_or_default();
        let id = arg.get_id().as_str();
        let value = if !takes_values(arg) {
            matches.get_flag(id).to_string()
        } else {
            let raw: Vec<String> = matches
                .get_raw(id)
                .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
                .unwrap_or_default();
            if repeatable(arg) {
                let items: Vec<String> = raw.iter().map(|v| quote(&without_password(v))).collect();
                format!("[{}]", items.join(", "))
            } else {
                match raw.into_iter().next().or_else(|| resolved(long)) {
                    Some(v) if secrets.contains(&long) && !v.is_empty() => quote("<hidden>"),
                    Some(v) => toml_scalar(&without_password(&v)),
                    None => quote(""),
                }
            }
        };
        out.push_str(&format!("{long} = {value}\n"));
    }
    out
}

/// A URL's credentials (`redis://:PASSWORD@host`) replaced by `***`; other values unchanged.
pub fn without_password(v: &str) -> String {
    match (v.find("://"), v.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme && !v[scheme + 3..at].contains('/') => {
            format!("{}://***@{}", &v[..scheme], &v[at + 1..])
        }
        _ => v.to_string(),
    }
}

fn toml_scalar(v: &str) -> String {
    match v.parse::<i64>() {
        Ok(n) if n.to_string() == v => v.to_owned(),
        _ => quote(v),
    }
}

/// A TOML basic string (JSON's escapes are a subset of TOML's).
fn quote(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
#[path = "layers_tests.rs"]
mod tests;
