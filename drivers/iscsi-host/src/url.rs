//! iSCSI URLs as SPDK's `bdev_iscsi_create` and libiscsi take them:
//! `iscsi://[user[%password]@]host[:port]/IQN/LUN[?arg[&arg]...]`, with
//! libiscsi's arguments `header_digest=crc32c|none`, `target_user=` and
//! `target_password=` (mutual CHAP), and Pollux's `data_digest=crc32c|none`
//! and `chap_digest=` (the CHAP digests offered, in order: `md5`,
//! `sha256`, `sha256,md5`...; MD5 alone by default).
//! An IPv6 host is written in brackets. A portal URL (for discovery) stops
//! after the host: `iscsi://host[:port][/]`.

use crate::IscsiError;
use pollux_iscsi_spec::chap::Algorithm;

use crate::login::Chap;

/// The iSCSI port.
pub const DEFAULT_PORT: u16 = 3260;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IscsiUrl {
    /// `host:port` (brackets kept for IPv6).
    pub portal: String,
    pub target: Option<String>,
    pub lun: Option<u16>,
    pub auth: Option<Chap>,
    pub header_digest: bool,
    pub data_digest: bool,
}

fn bad(url: &str, why: &str) -> IscsiError {
    IscsiError::Invalid(format!("invalid iSCSI URL {:?}: {why}", redact(url)))
}

/// The URL with any password replaced, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some(rest) = url.strip_prefix("iscsi://") else { return url.to_string() };
    let (head, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let head = match head.rsplit_once('@') {
        Some((cred, host)) => match cred.split_once('%') {
            Some((u, _)) => format!("{u}%****@{host}"),
            None => format!("{cred}@{host}"),
        },
        None => head.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, args)) => {
            let args: Vec<String> = args
                .split('&')
                .map(|a| if a.starts_with("target_password=") { "target_password=****".to_string() } else { a.to_string() })
                .collect();
            format!("{path}?{}", args.join("&"))
        }
        None => tail.to_string(),
    };
    format!("iscsi://{head}{tail}")
}

impl IscsiUrl {
    /// A LUN URL (target and LUN required).
    pub fn parse(url: &str) -> Result<IscsiUrl, IscsiError> {
        let u = IscsiUrl::parse_any(url)?;
        if u.target.is_none() || u.lun.is_none() {
            return Err(bad(url, "expected iscsi://[user[%password]@]host[:port]/IQN/LUN"));
        }
        Ok(u)
    }

    /// A portal or LUN URL.
    pub fn parse_any(url: &str) -> Result<IscsiUrl, IscsiError> {
        let rest = url.strip_prefix("iscsi://").ok_or_else(|| bad(url, "it does not start with iscsi://"))?;
        let (rest, args) = match rest.split_once('?') {
            Some((r, a)) => (r, Some(a)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (cred, host) = match authority.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(bad(url, "no host"));
        }
        let portal = if host.starts_with('[') {
            match host.find(']') {
                Some(i) if i + 1 == host.len() => format!("{host}:{DEFAULT_PORT}"),
                Some(i) if host[i + 1..].starts_with(':') => host.to_string(),
                _ => return Err(bad(url, "malformed IPv6 host")),
            }
        } else if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:{DEFAULT_PORT}")
        };
        if let Some((_, port)) = portal.rsplit_once(':') {
            port.parse::<u16>().map_err(|_| bad(url, "the port is not a number from 0 to 65535"))?;
        }
        let mut auth = cred.map(|c| {
            let (user, secret) = c.split_once('%').unwrap_or((c, ""));
            Chap { user: user.to_string(), secret: secret.to_string(), ..Chap::default() }
        });
        if auth.as_ref().is_some_and(|a| a.user.is_empty()) {
            return Err(bad(url, "an empty CHAP user name"));
        }
        let (target, lun) = if path.is_empty() {
            (None, None)
        } else {
            let (iqn, lun) = path.rsplit_once('/').ok_or_else(|| bad(url, "expected /IQN/LUN after the host"))?;
            if iqn.is_empty() || iqn.contains('/') {
                return Err(bad(url, "malformed target name"));
            }
            let lun: u16 = lun.parse().ok().filter(|l| *l < 16384).ok_or_else(|| bad(url, "the LUN is not a number from 0 to 16383"))?;
            (Some(iqn.to_string()), Some(lun))
        };
        let (mut header_digest, mut data_digest) = (false, false);
        let (mut tuser, mut tpass) = (None, None);
        let mut algorithms = None;
        for a in args.unwrap_or("").split('&').filter(|a| !a.is_empty()) {
            let (k, v) = a.split_once('=').unwrap_or((a, ""));
            let digest = |v: &str| match v.to_ascii_lowercase().as_str() {
                "crc32c" | "crc32c-none" | "crc32c,none" => Ok(true),
                "none" | "none-crc32c" | "none,crc32c" => Ok(false),
                _ => Err(bad(url, "a digest is crc32c or none")),
            };
            match k {
                "header_digest" => header_digest = digest(v)?,
                "data_digest" => data_digest = digest(v)?,
                "target_user" => tuser = Some(v.to_string()),
                "target_password" => tpass = Some(v.to_string()),
                "chap_digest" => {
                    let list: Option<Vec<Algorithm>> = v
                        .split(',')
                        .map(|a| match a.to_ascii_lowercase().as_str() {
                            "md5" => Some(Algorithm::Md5),
                            "sha256" | "sha-256" => Some(Algorithm::Sha256),
                            _ => None,
                        })
                        .collect();
                    algorithms = Some(list.filter(|l| !l.is_empty()).ok_or_else(|| bad(url, "chap_digest is a list of md5 and sha256"))?);
                }
                _ => return Err(bad(url, &format!("unknown argument {k:?}"))),
            }
        }
        match (tuser, tpass) {
            (None, None) => {}
            (Some(u), Some(p)) if !u.is_empty() => match auth.as_mut() {
                Some(a) => a.mutual = Some((u, p)),
                None => return Err(bad(url, "target_user needs the initiator's own user and password")),
            },
            _ => return Err(bad(url, "target_user and target_password go together")),
        }
        if let Some(list) = algorithms {
            match auth.as_mut() {
                Some(a) => a.algorithms = list,
                None => return Err(bad(url, "chap_digest without CHAP credentials")),
            }
        }
        Ok(IscsiUrl { portal, target, lun, auth, header_digest, data_digest })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lun_urls_with_credentials_and_arguments() {
        let u = IscsiUrl::parse("iscsi://127.0.0.1/iqn.2016-06.io.spdk:disk1/0").unwrap();
        assert_eq!((u.portal.as_str(), u.target.as_deref(), u.lun), ("127.0.0.1:3260", Some("iqn.2016-06.io.spdk:disk1"), Some(0)));
        assert!(u.auth.is_none() && !u.header_digest && !u.data_digest);
        let u = IscsiUrl::parse(
            "iscsi://alice%s3cret@host:3261/iqn.x:y/7?header_digest=crc32c&data_digest=crc32c&target_user=t&target_password=tp",
        )
        .unwrap();
        assert_eq!(u.portal, "host:3261");
        assert_eq!(u.lun, Some(7));
        let a = u.auth.unwrap();
        assert_eq!((a.user.as_str(), a.secret.as_str()), ("alice", "s3cret"));
        assert_eq!(a.mutual, Some(("t".into(), "tp".into())));
        assert!(u.header_digest && u.data_digest);
        assert_eq!(a.algorithms, vec![Algorithm::Md5]);
        let u = IscsiUrl::parse("iscsi://a%b@h/iqn.x/0?chap_digest=sha256,md5").unwrap();
        assert_eq!(u.auth.unwrap().algorithms, vec![Algorithm::Sha256, Algorithm::Md5]);
        assert!(IscsiUrl::parse("iscsi://h/iqn.x/0?chap_digest=md5").is_err(), "no credentials");
        assert!(IscsiUrl::parse("iscsi://a%b@h/iqn.x/0?chap_digest=sha1").is_err());
        assert_eq!(IscsiUrl::parse("iscsi://[::1]:3262/iqn.x/1").unwrap().portal, "[::1]:3262");
        assert_eq!(IscsiUrl::parse("iscsi://[::1]/iqn.x/1").unwrap().portal, "[::1]:3260");
        let p = IscsiUrl::parse_any("iscsi://10.0.0.1:3270").unwrap();
        assert_eq!((p.portal.as_str(), p.target, p.lun), ("10.0.0.1:3270", None, None));
    }

    #[test]
    fn refuses_malformed_urls_without_showing_the_password() {
        for u in [
            "http://h/iqn/0",
            "iscsi://h/iqn",
            "iscsi://h/iqn/x",
            "iscsi://h/iqn/16384",
            "iscsi:///iqn/0",
            "iscsi://h:99999/iqn/0",
            "iscsi://h/iqn/0?bogus=1",
            "iscsi://h/iqn/0?target_user=x&target_password=y",
            "iscsi://%pw@h/iqn/0",
            "iscsi://h/iqn/0?header_digest=md5",
        ] {
            assert!(IscsiUrl::parse(u).is_err(), "{u}");
        }
        let e = IscsiUrl::parse("iscsi://u%topsecret@h/iqn/x?target_user=a&target_password=hidden").unwrap_err().to_string();
        assert!(!e.contains("topsecret") && !e.contains("hidden"), "{e}");
        assert!(e.contains("u%****@h"), "{e}");
    }
}
