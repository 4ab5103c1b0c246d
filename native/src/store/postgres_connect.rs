//! Where a PostgreSQL store connects and how: a libpq connection string (key/value or URL) or
//! its parts, with libpq's TLS settings, made into a tokio-postgres configuration and the TLS
//! connector of `postgres_tls.rs`.
//!
//! tokio-postgres parses `sslmode` only up to `require` and refuses `sslrootcert`, `sslcert` and
//! `sslkey`, so those four are taken out of the string here and the rest is left to it.
//! The settings follow libpq:
//! - `sslmode`: `disable`, `prefer` (the default), `require`, `verify-ca`, `verify-full`
//!   (`allow` is refused: it would try plain text first). TLS is never used over a unix socket,
//!   whatever the mode, as in libpq.
//! - `sslrootcert`: a PEM file of root certificates, or `system` for the operating system's
//!   trusted roots (then the mode defaults to `verify-full`, and a weaker one is refused). Without
//!   it, `~/.postgresql/root.crt` when that file exists. With root certificates, `prefer` and
//!   `require` check the chain as `verify-ca` does; without, they check nothing.
//! - `sslcert`, `sslkey`: a client certificate (PEM chain) and its unencrypted key (PKCS#8,
//!   PKCS#1 or SEC1 PEM; on unix readable by its owner only, as libpq demands). Defaults
//!   `~/.postgresql/postgresql.crt` and `postgresql.key` when the certificate file exists.
//!
//! Environment variables (`PGSSLMODE`, …) are not read, as tokio-postgres reads none.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    RootCertStore,
};
use tokio_postgres::config::{Host, SslMode as DriverSslMode, SslNegotiation};

use super::postgres_tls::{PostgresTls, Verify};

/// libpq's `sslmode`, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => return Err("\"allow\" (plain text first) is not supported: use prefer, or disable".into()),
            other => return Err(format!("{other:?} is not one of disable, prefer, require, verify-ca, verify-full")),
        })
    }
}

/// The TLS settings given in one place (the connection string, or the option fields).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslSettings {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
}

/// Where a refused setting was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// In the connection string.
    Url,
    /// As an option field of its own name.
    Field,
}

/// A refused connection setting: its libpq name, where it was given, why.
#[derive(Debug, PartialEq, Eq)]
pub struct SettingError {
    pub setting: &'static str,
    pub origin: Origin,
    pub message: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

impl std::error::Error for SettingError {}

/// A database to connect to: the driver's configuration and the TLS connector that goes with it.
#[derive(Clone)]
pub struct PostgresTarget {
    pub config: tokio_postgres::Config,
    pub tls: PostgresTls,
    /// The TLS settings in force, for telling targets apart (`Debug` of the config omits them).
    pub tls_shown: String,
    /// Where the TLS mode was given (or [`Origin::Field`] for the default): the field that
    /// connection-time TLS failures name.
    pub tls_origin: Origin,
}

impl fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}", self.config, self.tls_shown)
    }
}

impl FromStr for PostgresTarget {
    type Err = SettingError;

    /// A libpq connection string or URL, TLS settings included, defaults from `$HOME`.
    fn from_str(text: &str) -> Result<Self, SettingError> {
        let (config, settings) = parse_connection_string(text)?;
        resolve(config, settings, SslSettings::default(), home().as_deref())
    }
}

/// The user's home folder, where libpq looks for `.postgresql/root.crt` and the client certificate.
pub fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

const SSL_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

fn url_error(message: impl Into<String>) -> SettingError {
    SettingError { setting: "url", origin: Origin::Url, message: message.into() }
}

/// Split a connection string into the driver's configuration and the TLS settings it names.
pub fn parse_connection_string(text: &str) -> Result<(tokio_postgres::Config, SslSettings), SettingError> {
    let (rest, pairs) = if text.starts_with("postgresql://") || text.starts_with("postgres://") {
        split_url(text)?
    } else {
        split_key_values(text)?
    };
    let mut settings = SslSettings::default();
    for (key, value) in pairs {
        let slot = match key.as_str() {
            "sslmode" => &mut settings.sslmode,
            "sslrootcert" => &mut settings.sslrootcert,
            "sslcert" => &mut settings.sslcert,
            _ => &mut settings.sslkey,
        };
        *slot = Some(value);
    }
    let config = rest.parse::<tokio_postgres::Config>().map_err(|e| {
        let detail = std::error::Error::source(&e).map(|s| format!("{e}: {s}")).unwrap_or_else(|| e.to_string());
        url_error(format!("not a PostgreSQL connection string ({detail})"))
    })?;
    Ok((config, settings))
}

/// A URL without its TLS query parameters, and those parameters (percent-decoded).
fn split_url(text: &str) -> Result<(String, Vec<(String, String)>), SettingError> {
    let Some((base, query)) = text.split_once('?') else { return Ok((text.to_owned(), Vec::new())) };
    let (mut kept, mut taken) = (Vec::new(), Vec::new());
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let key = percent_decode(key)?;
        if SSL_KEYS.contains(&key.as_str()) {
            taken.push((key, percent_decode(value)?));
        } else {
            kept.push(part);
        }
    }
    let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((rest, taken))
}

fn percent_decode(text: &str) -> Result<String, SettingError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| url_error(format!("bad percent-encoding in {text:?}")))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| url_error(format!("{text:?} does not decode to UTF-8")))
}

/// A key/value connection string without its TLS settings, and those settings. The syntax is
/// libpq's: `key = value` pairs separated by spaces, values in single quotes when they hold
/// spaces, a backslash escaping the next character.
fn split_key_values(text: &str) -> Result<(String, Vec<(String, String)>), SettingError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|c| c.1);
    let offset = |i: usize| chars.get(i).map_or(text.len(), |c| c.0);
    let (mut kept, mut taken) = (Vec::new(), Vec::new());
    let mut i = 0;
    loop {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let Some(_) = at(i) else { break };
        let start = i;
        while at(i).is_some_and(|c| c != '=' && !c.is_whitespace()) {
            i += 1;
        }
        let key = &text[offset(start)..offset(i)];
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i) != Some('=') {
            return Err(url_error(format!("not a PostgreSQL connection string (missing \"=\" after {key:?})")));
        }
        i += 1;
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let mut value = String::new();
        if at(i) == Some('\'') {
            i += 1;
            loop {
                match at(i) {
                    None => return Err(url_error(format!("not a PostgreSQL connection string (unterminated quote in the value of {key:?})"))),
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') if at(i + 1).is_some() => {
                        value.push(at(i + 1).unwrap_or_default());
                        i += 2;
                    }
                    Some(c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(c) = at(i).filter(|c| !c.is_whitespace()) {
                if c == '\\' && at(i + 1).is_some() {
                    value.push(at(i + 1).unwrap_or_default());
                    i += 2;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
        }
        if SSL_KEYS.contains(&key) {
            taken.push((key.to_owned(), value));
        } else {
            kept.push(&text[offset(start)..offset(i)]);
        }
    }
    Ok((kept.join(" "), taken))
}

/// One TLS setting and where it came from, when given in at most one place.
fn pick(setting: &'static str, url: &Option<String>, field: &Option<String>) -> Result<Option<(String, Origin)>, SettingError> {
    match (url, field) {
        (Some(_), Some(_)) => Err(SettingError {
            setting,
            origin: Origin::Field,
            message: "is also given in the connection string (url); give it in one place".into(),
        }),
        (Some(v), None) => Ok(Some((v.clone(), Origin::Url))),
        (None, Some(v)) => Ok(Some((v.clone(), Origin::Field))),
        (None, None) => Ok(None),
    }
}

/// The TLS settings from the connection string and from the option fields applied to `config`:
/// the driver told which mode to use, and the connector that checks what the mode asks.
/// `home`: where libpq's default files are looked for (`None`: no defaults).
pub fn resolve(mut config: tokio_postgres::Config, url: SslSettings, fields: SslSettings, home: Option<&Path>) -> Result<PostgresTarget, SettingError> {
    let mode = pick("sslmode", &url.sslmode, &fields.sslmode)?;
    let root = pick("sslrootcert", &url.sslrootcert, &fields.sslrootcert)?;
    let cert = pick("sslcert", &url.sslcert, &fields.sslcert)?;
    let key = pick("sslkey", &url.sslkey, &fields.sslkey)?;
    let err = |setting: &'static str, origin: Origin, message: String| SettingError { setting, origin, message };

    let system_roots = root.as_ref().is_some_and(|(r, _)| r == "system");
    let (mode, mode_origin) = match &mode {
        Some((value, origin)) => (SslMode::parse(value).map_err(|m| err("sslmode", *origin, m))?, *origin),
        // libpq: sslrootcert=system makes verify-full the default, so the system's roots are
        // never trusted for a name they were not issued for.
        None if system_roots => (SslMode::VerifyFull, Origin::Field),
        None => (SslMode::Prefer, Origin::Field),
    };
    if system_roots && mode < SslMode::VerifyFull {
        let origin = root.as_ref().map_or(Origin::Field, |r| r.1);
        return Err(err(
            "sslrootcert",
            origin,
            format!("\"system\" trusts every public certificate authority, so it needs sslmode verify-full, not {}", mode.name()),
        ));
    }

    let unix = config.get_hosts().iter().filter(|h| !matches!(h, Host::Tcp(_))).count();
    let tcp = config.get_hosts().len() - unix + config.get_hostaddrs().len();
    if mode == SslMode::Disable || (tcp == 0 && unix > 0) {
        // libpq never uses TLS over a unix socket: the socket's permissions guard it.
        config.ssl_mode(DriverSslMode::Disable);
        return Ok(PostgresTarget { config, tls: PostgresTls::off(), tls_shown: "sslmode=disable".into(), tls_origin: mode_origin });
    }
    if unix > 0 && mode >= SslMode::Require {
        return Err(err(
            "sslmode",
            mode_origin,
            format!("{} cannot hold for the unix sockets among the hosts (TLS is never used over a socket); list TCP hosts only", mode.name()),
        ));
    }

    let default_file = |name: &str| home.map(|h| h.join(".postgresql").join(name)).filter(|p| p.is_file());
    let roots = match &root {
        Some((value, origin)) if value == "system" => Some((system_store().map_err(|m| err("sslrootcert", *origin, m))?, value.clone())),
        Some((value, origin)) => Some((pem_roots(Path::new(value)).map_err(|m| err("sslrootcert", *origin, m))?, value.clone())),
        None => match default_file("root.crt") {
            Some(path) => Some((pem_roots(&path).map_err(|m| err("sslrootcert", Origin::Field, m))?, path.display().to_string())),
            None => None,
        },
    };
    let verify = match (mode, &roots) {
        (SslMode::VerifyFull, Some(_)) => Verify::Full,
        (SslMode::VerifyCa | SslMode::Disable | SslMode::Prefer | SslMode::Require, Some(_)) => Verify::Chain,
        (SslMode::Prefer | SslMode::Require, None) => Verify::None,
        (_, None) => {
            let default = home.map_or("~/.postgresql/root.crt".into(), |h| h.join(".postgresql/root.crt").display().to_string());
            return Err(err(
                "sslrootcert",
                mode_origin,
                format!(
                    "sslmode {} checks the server's certificate, so it needs the certificate authority: sslrootcert names a PEM file, or \"system\" for the system's trusted roots ({default}, libpq's default, does not exist)",
                    mode.name()
                ),
            ));
        }
    };

    let cert = cert.or_else(|| default_file("postgresql.crt").map(|p| (p.display().to_string(), Origin::Field)));
    let client = match &cert {
        None => match &key {
            Some((_, origin)) => return Err(err("sslkey", *origin, "is given without sslcert, the certificate it belongs to".into())),
            None => None,
        },
        Some((cert_path, cert_origin)) => {
            let (key_path, key_origin) = match &key {
                Some((path, origin)) => (PathBuf::from(path), *origin),
                None => match default_file("postgresql.key") {
                    Some(path) => (path, Origin::Field),
                    None => {
                        return Err(err("sslkey", *cert_origin, format!("is required with sslcert {cert_path:?}: the file of its private key")))
                    }
                },
            };
            let chain = CertificateDer::pem_file_iter(cert_path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| err("sslcert", *cert_origin, format!("cannot read certificates from {cert_path:?}: {e}")))?;
            if chain.is_empty() {
                return Err(err("sslcert", *cert_origin, format!("{cert_path:?} holds no PEM certificate")));
            }
            check_key_permissions(&key_path).map_err(|m| err("sslkey", key_origin, m))?;
            let private = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
                err(
                    "sslkey",
                    key_origin,
                    format!(
                        "cannot read a private key from {:?} ({e}): an unencrypted PKCS#8, PKCS#1 or SEC1 PEM key is needed (encrypted keys are not supported)",
                        key_path.display().to_string()
                    ),
                )
            })?;
            Some((chain, private))
        }
    };

    let has_client = client.is_some();
    // `require` and above: the connector sends the SSLRequest itself (postgres_tls.rs), unless
    // the caller asked for PostgreSQL 17's direct TLS, where there is no SSLRequest at all.
    let negotiate = mode >= SslMode::Require && config.get_ssl_negotiation() == SslNegotiation::Postgres;
    config.ssl_mode(if mode >= SslMode::Require { DriverSslMode::Require } else { DriverSslMode::Prefer });
    if mode >= SslMode::Require {
        config.ssl_negotiation(SslNegotiation::Direct);
    }
    let (store, roots_shown) = match roots {
        Some((store, shown)) => (store, shown),
        None => (RootCertStore::empty(), String::new()),
    };
    let tls = PostgresTls::new(verify, store, client, negotiate, mode.name())
        .map_err(|e| err(if has_client { "sslcert" } else { "sslmode" }, mode_origin, format!("cannot set up TLS: {e}")))?;
    let tls_shown = format!(
        "sslmode={} verify={verify:?} sslrootcert={roots_shown:?} sslcert={:?} sslkey={:?}",
        mode.name(),
        cert.as_ref().map(|c| c.0.as_str()),
        key.as_ref().map(|k| k.0.as_str())
    );
    Ok(PostgresTarget { config, tls, tls_shown, tls_origin: mode_origin })
}

/// Root certificates from a PEM file.
fn pem_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {shown:?}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown:?} holds no PEM certificate"));
    }
    let mut store = RootCertStore::empty();
    for cert in certs {
        store.add(cert).map_err(|e| format!("{shown:?} holds a certificate that cannot be a root: {e}"))?;
    }
    Ok(store)
}

/// The operating system's trusted roots (`sslrootcert=system`).
fn system_store() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
        return Err(format!("\"system\": no trusted root certificate found on this system{why}"));
    }
    Ok(store)
}

/// libpq refuses a private key others can read: owned by the user, no access for group or
/// others; owned by root, group read at most.
#[cfg(unix)]
fn check_key_permissions(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {:?}: {e}", path.display().to_string()))?;
    let mode = meta.mode();
    let too_open = if meta.uid() == 0 { mode & 0o037 != 0 } else { mode & 0o077 != 0 };
    if too_open {
        return Err(format!(
            "{:?} can be read by others (mode {:o}): make it u=rw (0600) or less, or u=rw,g=r (0640) when owned by root",
            path.display().to_string(),
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_permissions(_path: &Path) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> (tokio_postgres::Config, SslSettings) {
        parse_connection_string(text).unwrap()
    }

    fn resolved(text: &str) -> Result<PostgresTarget, SettingError> {
        let (config, url) = parse_connection_string(text)?;
        resolve(config, url, SslSettings::default(), None)
    }

    #[test]
    fn the_tls_settings_are_taken_out_of_a_key_value_string() {
        let (config, ssl) = settings(r"host=db.internal sslmode=verify-full password='it\'s a \\ spaced one' sslrootcert = '/etc/ca dir/root.crt' user=bot");
        assert_eq!(ssl.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(ssl.sslrootcert.as_deref(), Some("/etc/ca dir/root.crt"));
        assert_eq!(config.get_user(), Some("bot"));
        assert_eq!(config.get_password(), Some(&br"it's a \ spaced one"[..]));
        assert_eq!(config.get_hosts(), &[Host::Tcp("db.internal".into())]);
    }

    #[test]
    fn the_tls_settings_are_taken_out_of_a_url() {
        let (config, ssl) = settings("postgresql://bot:s%40cret@db.internal:6432/crypto?sslmode=require&application_name=mcn&sslrootcert=%2Fetc%2Fca.crt&sslcert=c.pem&sslkey=k.pem");
        assert_eq!(
            ssl,
            SslSettings {
                sslmode: Some("require".into()),
                sslrootcert: Some("/etc/ca.crt".into()),
                sslcert: Some("c.pem".into()),
                sslkey: Some("k.pem".into())
            }
        );
        assert_eq!(config.get_password(), Some(&b"s@cret"[..]));
        assert_eq!(config.get_application_name(), Some("mcn"));
        assert_eq!(config.get_ports(), &[6432]);
    }

    #[test]
    fn a_malformed_string_names_the_url() {
        for text in ["host", "host='unterminated", "postgresql://x/?sslmode=%zz"] {
            let err = parse_connection_string(text).unwrap_err();
            assert_eq!((err.setting, err.origin), ("url", Origin::Url), "{text}: {err}");
        }
    }

    #[test]
    fn modes_map_to_what_the_driver_does() {
        let target = resolved("host=db user=u").unwrap();
        assert_eq!(target.config.get_ssl_mode(), DriverSslMode::Prefer, "libpq's default");
        assert!(target.tls.is_on());
        let target = resolved("host=db user=u sslmode=require").unwrap();
        // The connector sends the SSLRequest itself, so the driver is told the TLS is direct.
        assert_eq!((target.config.get_ssl_mode(), target.config.get_ssl_negotiation()), (DriverSslMode::Require, SslNegotiation::Direct));
        let target = resolved("host=db user=u sslmode=disable").unwrap();
        assert_eq!(target.config.get_ssl_mode(), DriverSslMode::Disable);
        assert!(!target.tls.is_on());
    }

    #[test]
    fn a_unix_socket_never_uses_tls() {
        for mode in ["prefer", "require", "verify-full"] {
            let target = resolved(&format!("host=/run/postgresql user=u sslmode={mode}")).unwrap();
            assert_eq!(target.config.get_ssl_mode(), DriverSslMode::Disable, "{mode}");
        }
        let err = resolved("host=/run/postgresql,db user=u sslmode=require").err().unwrap();
        assert_eq!((err.setting, err.origin), ("sslmode", Origin::Url), "{err}");
        assert!(resolved("host=/run/postgresql,db user=u sslmode=prefer").is_ok());
    }

    #[test]
    fn refused_settings_name_themselves_and_where_they_were_given() {
        let err = resolved("host=db user=u sslmode=allow").err().unwrap();
        assert_eq!((err.setting, err.origin), ("sslmode", Origin::Url));
        let err = resolved("host=db user=u sslmode=verify-full").err().unwrap();
        assert_eq!((err.setting, err.origin), ("sslrootcert", Origin::Url));
        assert!(err.message.contains("needs the certificate authority"), "{err}");
        let err = resolved("host=db user=u sslrootcert=/nonexistent/ca.crt").err().unwrap();
        assert_eq!((err.setting, err.origin), ("sslrootcert", Origin::Url));
        let err = resolved("host=db user=u sslrootcert=system sslmode=verify-ca").err().unwrap();
        assert_eq!((err.setting, err.origin), ("sslrootcert", Origin::Url));
        assert!(err.message.contains("needs sslmode verify-full"), "{err}");
        let err = resolved("host=db user=u sslkey=/k.pem").err().unwrap();
        assert_eq!((err.setting, err.origin), ("sslkey", Origin::Url));

        let (config, url) = parse_connection_string("host=db user=u sslmode=require").unwrap();
        let fields = SslSettings { sslmode: Some("verify-full".into()), ..SslSettings::default() };
        let err = resolve(config, url, fields, None).err().unwrap();
        assert_eq!((err.setting, err.origin), ("sslmode", Origin::Field), "given twice: {err}");
        let (config, url) = parse_connection_string("host=db user=u").unwrap();
        let fields = SslSettings { sslmode: Some("verify-all".into()), ..SslSettings::default() };
        let err = resolve(config, url, fields, None).err().unwrap();
        assert_eq!((err.setting, err.origin), ("sslmode", Origin::Field));
    }

    #[test]
    fn libpq_default_files_are_read_from_home() {
        let home = std::env::temp_dir().join(format!("mcn-pg-home-{}", std::process::id()));
        std::fs::create_dir_all(home.join(".postgresql")).unwrap();
        let (config, url) = parse_connection_string("host=db user=u sslmode=verify-full").unwrap();
        let err = resolve(config.clone(), url.clone(), SslSettings::default(), Some(&home)).err().unwrap();
        assert!(err.message.contains(&home.join(".postgresql/root.crt").display().to_string()), "{err}");
        // A root.crt that is not PEM is reported as sslrootcert's: the default file was read.
        std::fs::write(home.join(".postgresql/root.crt"), "not a certificate").unwrap();
        let err = resolve(config, url, SslSettings::default(), Some(&home)).err().unwrap();
        assert_eq!(err.setting, "sslrootcert", "{err}");
        assert!(err.message.contains("holds no PEM certificate"), "{err}");
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mcn-pg-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("client.key");
        std::fs::write(&key, "irrelevant").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_key_permissions(&key).unwrap_err();
        assert!(err.contains("can be read by others (mode 644)"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_key_permissions(&key).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
