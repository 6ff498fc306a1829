//! Turning argv and turnserver.conf lines into option occurrences ([`Item`]s) through the
//! one option table, then applying them to a [`Config`]. The command line and files share
//! the lookup, arity rules and effects; only tokenising differs.

use super::table::{self, Arity, Effect, Opt};
use super::{validate, Command, Config, Error, Ignored};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub use super::table::usage;

/// One option occurrence, from the command line or a file.
pub(crate) struct Item {
    pub opt: &'static Opt,
    pub value: Option<String>,
    /// Where it came from, for error messages.
    pub origin: String,
}

impl Item {
    pub fn bad(&self, message: impl Into<String>) -> Error {
        Error::BadValue {
            option: format!("--{} ({})", self.opt.name, self.origin),
            message: message.into(),
        }
    }

    pub fn text(&self) -> String {
        self.value.clone().unwrap_or_default()
    }

    pub fn num<T: std::str::FromStr>(&self) -> Result<T, Error> {
        let v = self.value.as_deref().unwrap_or("");
        v.trim()
            .parse()
            .map_err(|_| self.bad(format!("'{v}' is not a valid number")))
    }

    pub fn ip(&self) -> Result<IpAddr, Error> {
        self.with(|v| {
            v.trim()
                .parse()
                .map_err(|_| format!("'{v}' is not an IP address"))
        })
    }

    /// The value through a syntax parser whose message names no option.
    pub fn with<T>(&self, f: impl FnOnce(&str) -> Result<T, String>) -> Result<T, Error> {
        f(self.value.as_deref().unwrap_or("")).map_err(|e| self.bad(e))
    }
}

fn tokens_to_items(tokens: &[String]) -> Result<Vec<Item>, Error> {
    let mut items = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let tok = &tokens[i];
        let (opt, inline) = if let Some(long) = tok.strip_prefix("--") {
            let (n, v) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (long, None),
            };
            let opt = table::by_name(n).ok_or_else(|| Error::UnknownOption(format!("--{n}")))?;
            (opt, v)
        } else if let Some(short) = tok.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let c = chars.next().unwrap_or('-');
            let rest: String = chars.collect();
            let opt = table::by_short(c).ok_or_else(|| Error::UnknownOption(format!("-{c}")))?;
            (opt, (!rest.is_empty()).then_some(rest))
        } else {
            return Err(Error::UnknownOption(tok.clone()));
        };
        let value = match opt.arity {
            Arity::Flag if inline.is_some() => {
                return Err(Error::BadValue {
                    option: format!("--{}", opt.name),
                    message: "takes no value".into(),
                })
            }
            Arity::Flag => None,
            Arity::OptionalValue => inline,
            Arity::Value => match inline {
                Some(v) => Some(v),
                None => {
                    i += 1;
                    let v = tokens.get(i).cloned();
                    Some(v.ok_or_else(|| Error::MissingValue(format!("--{}", opt.name)))?)
                }
            },
        };
        items.push(Item {
            opt,
            value,
            origin: format!("argument {}", i + 1),
        });
        i += 1;
    }
    Ok(items)
}

/// Reads a turnserver.conf-style file: `name=value`, `name value` or `name` per line; a
/// flag may be written `name=true|yes|on|1` (set) or `=false|no|off|0` (not set), as
/// coturn's files allow.
fn file_items(path: &Path) -> Result<Vec<Item>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::File {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = match line.find(|c: char| c == '=' || c.is_whitespace()) {
            Some(at) => {
                let value = line[at..].trim_start_matches(|c: char| c == '=' || c.is_whitespace());
                (&line[..at], Some(value.trim().trim_matches('"').to_owned()))
            }
            None => (line, None),
        };
        let name = name.trim_start_matches('-');
        let file_err = |message: String| Error::File {
            path: path.to_owned(),
            message: format!("line {}: {message}", n + 1),
        };
        let opt = table::by_name(name)
            .or_else(|| single_char(name).and_then(table::by_short))
            .ok_or_else(|| file_err(format!("unknown option {name}")))?;
        let value = match (opt.arity, value) {
            (Arity::Flag, Some(v)) => match v.to_ascii_lowercase().as_str() {
                "" | "1" | "yes" | "true" | "on" => None,
                "0" | "no" | "false" | "off" => continue,
                _ => return Err(file_err(format!("{name} takes no value"))),
            },
            (Arity::Flag, None) => None,
            (Arity::Value, None) => return Err(file_err(format!("{name} needs a value"))),
            (_, v) => v,
        };
        if matches!(opt.effect, Effect::Meta) {
            return Err(file_err(format!("{name} cannot be used in a config file")));
        }
        items.push(Item {
            opt,
            value,
            origin: format!("{} line {}", path.display(), n + 1),
        });
    }
    Ok(items)
}

fn single_char(name: &str) -> Option<char> {
    let mut chars = name.chars();
    let c = chars.next()?;
    chars.next().is_none().then_some(c)
}

/// Parses the command line (without the program name).
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Command, Error> {
    let tokens: Vec<String> = args.into_iter().collect();
    let cli = tokens_to_items(&tokens)?;
    if cli.iter().any(|i| i.opt.name == "help") {
        return Ok(Command::Help(usage()));
    }
    if cli.iter().any(|i| i.opt.name == "version") {
        return Ok(Command::Version(format!(
            "uturn {}",
            env!("CARGO_PKG_VERSION")
        )));
    }
    let mut config = Config::default();
    let mut items = Vec::new();
    if let Some(conf) = cli.iter().rev().find(|i| i.opt.name == "conf") {
        let path = PathBuf::from(conf.text());
        items.extend(file_items(&path)?);
        config.config_file = Some(path);
    }
    // Lists given on the command line replace the file's.
    let cli_names: Vec<&str> = cli.iter().map(|i| i.opt.name).collect();
    items.retain(|i| !(matches!(i.opt.effect, Effect::List(_)) && cli_names.contains(&i.opt.name)));
    items.extend(cli);
    for item in &items {
        apply(&mut config, item)?;
    }
    validate(&config)?;
    Ok(Command::Run(Box::new(config)))
}

/// Applies one occurrence. Every row of the table says what it does: there is no default
/// arm that could drop an option silently.
pub(crate) fn apply(c: &mut Config, item: &Item) -> Result<(), Error> {
    match item.opt.effect {
        Effect::Set(f) | Effect::List(f) => f(c, item),
        Effect::Meta => Ok(()),
        Effect::Ignored(reason) => {
            if !c.ignored.iter().any(|i| i.option == item.opt.name) {
                c.ignored.push(Ignored {
                    option: item.opt.name,
                    reason,
                });
            }
            Ok(())
        }
        Effect::Refused(reason) => Err(Error::Unsupported {
            option: item.opt.name,
            origin: item.origin.clone(),
            reason,
        }),
    }
}
