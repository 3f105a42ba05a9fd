//! [`EdgeConfig`]: plain settings, deserializable from Botline's figment settings.
//!
//! ```toml
//! [edge]
//! allowlist = ["telegram"]            # Telegram's webhook ranges; leave unset for no allowlist
//! trusted_proxies = ["10.0.0.0/8"]    # the load balancer; unset: the socket peer is the client
//! proxy_header = "x-forwarded-for"    # or "forwarded" (RFC 7239): the one your proxy writes
//!
//! [edge.rate_limit]
//! enabled = true
//! rate = 20                           # requests per second per client address
//! burst = 40
//!
//! [edge.webapp]
//! enabled = true
//! max_age = "24h"
//! session_ttl = "1h"
//! ```
//!
//! Network lists take CIDR blocks (`149.154.160.0/20`, `2001:db8::/32`), single addresses
//! (`127.0.0.1`, taken as `/32` or `/128`), and the word `telegram` for Telegram's published
//! webhook ranges ([`EdgeConfig::telegram_default`]). IPv4-mapped IPv6 blocks
//! (`::ffff:10.0.0.0/104`) are stored as the IPv4 blocks they are.

use crate::client::{ProxyHeader, canonical};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Deserializer, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// Telegram's published webhook source ranges (149.154.160.0/20 and 91.108.4.0/22).
pub const TELEGRAM_WEBHOOK_RANGES: [IpNet; 2] = [
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(149, 154, 160, 0), 20)),
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(91, 108, 4, 0), 22)),
];

/// The edge's settings. Every field has a default, and the defaults guard nothing: an empty
/// `[edge]` table leaves the allowlist and the per-address rate limit off, so wiring the layer
/// in changes no deployment until its operator opts in. (Limiting by address behind a proxy
/// that is not listed in `trusted_proxies` would put every client in the proxy's one bucket.)
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// The networks whose clients may pass; `None` (the default) turns the allowlist off.
    #[serde(deserialize_with = "optional_nets")]
    pub allowlist: Option<Vec<IpNet>>,
    /// Proxies whose forwarding header is believed. Empty (the default): the socket peer, or
    /// the [`ClientAddr`](crate::ClientAddr) extension, is the client and headers are ignored.
    #[serde(deserialize_with = "nets")]
    pub trusted_proxies: Vec<IpNet>,
    /// Which header the trusted proxies write. Only that one is read: a header the proxy passes
    /// through untouched is the client's own word.
    pub proxy_header: ProxyHeader,
    /// The per-client-address token bucket.
    pub rate_limit: RateLimitConfig,
    /// `POST /telegram/webapp/auth`.
    pub webapp: WebAppConfig,
}

impl EdgeConfig {
    /// The defaults, with the allowlist on and set to Telegram's webhook ranges.
    pub fn telegram_default() -> Self {
        Self {
            allowlist: Some(TELEGRAM_WEBHOOK_RANGES.to_vec()),
            ..Self::default()
        }
    }
}

/// A token bucket per key: `burst` requests at once, refilled at `rate` per second.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Default `false`.
    pub enabled: bool,
    /// Requests per second per key, at least 1. Default 20.
    pub rate: u32,
    /// Requests a key may make at once, at least 1. Default 40.
    pub burst: u32,
    /// How many keys get a bucket of their own; past that, new keys share one bucket until
    /// idle keys are dropped. Bounds the limiter's memory. Default 65,536 (a few MiB).
    pub max_keys: usize,
    /// IPv6 clients are counted per prefix of this length (a host usually holds a whole /64).
    /// Default 64.
    pub ipv6_prefix: u8,
    /// How often idle keys are dropped and the table shrunk. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub cleanup_interval: Duration,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            rate: 20,
            burst: 40,
            max_keys: 65_536,
            ipv6_prefix: 64,
            cleanup_interval: Duration::from_secs(60),
        }
    }
}

/// The Mini App auth endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebAppConfig {
    /// Whether the caller mounts the route. Default `false`; it needs the bot token.
    pub enabled: bool,
    /// The route's path. Default `/telegram/webapp/auth`.
    pub path: String,
    /// The oldest `auth_date` accepted. Default `24h`: Telegram hands a Mini App the same
    /// initData for as long as it stays open.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// How long an issued session token is valid. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Sign-ins per second per Telegram user. Default 1.
    pub rate: u32,
    /// Sign-ins a user may make at once. Default 5.
    pub burst: u32,
    /// Users with a bucket of their own (see [`RateLimitConfig::max_keys`]). Default 65,536.
    pub max_keys: usize,
}

impl Default for WebAppConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "/telegram/webapp/auth".to_owned(),
            max_age: Duration::from_secs(24 * 3600),
            session_ttl: Duration::from_secs(3600),
            rate: 1,
            burst: 5,
            max_keys: 65_536,
        }
    }
}

/// Settings that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("edge.{0} must be at least 1")]
    Zero(&'static str),
    #[error("edge.rate_limit.ipv6_prefix must be 0 to 128, not {0}")]
    Ipv6Prefix(u8),
    #[error("edge.allowlist is empty, which refuses every request; leave it unset to turn it off")]
    EmptyAllowlist,
    #[error("a session key must be at least 32 bytes long")]
    ShortSessionKey,
}

impl EdgeConfig {
    /// Checks what deserialization cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.allowlist.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::EmptyAllowlist);
        }
        self.rate_limit.validate()?;
        self.webapp.validate()
    }
}

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.rate == 0 {
            return Err(ConfigError::Zero("rate_limit.rate"));
        }
        if self.burst == 0 {
            return Err(ConfigError::Zero("rate_limit.burst"));
        }
        if self.max_keys == 0 {
            return Err(ConfigError::Zero("rate_limit.max_keys"));
        }
        if self.ipv6_prefix > 128 {
            return Err(ConfigError::Ipv6Prefix(self.ipv6_prefix));
        }
        Ok(())
    }
}

impl WebAppConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.rate == 0 {
            return Err(ConfigError::Zero("webapp.rate"));
        }
        if self.burst == 0 {
            return Err(ConfigError::Zero("webapp.burst"));
        }
        if self.max_keys == 0 {
            return Err(ConfigError::Zero("webapp.max_keys"));
        }
        if self.session_ttl.is_zero() {
            return Err(ConfigError::Zero("webapp.session_ttl"));
        }
        Ok(())
    }
}

/// Parses one network-list entry: a CIDR block, a single address, or `telegram`.
pub fn parse_nets(entry: &str) -> Result<Vec<IpNet>, String> {
    let entry = entry.trim();
    if entry.eq_ignore_ascii_case("telegram") {
        return Ok(TELEGRAM_WEBHOOK_RANGES.to_vec());
    }
    let net = match entry.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match entry.parse::<IpAddr>() {
            Ok(addr) => IpNet::from(addr),
            Err(_) => {
                return Err(format!(
                    "{entry:?} is not a network: write a CIDR block such as 149.154.160.0/20, \
                     an address, or \"telegram\""
                ));
            }
        },
    };
    Ok(vec![canonical_net(net)])
}

/// An IPv4-mapped IPv6 block as the IPv4 block it is; other blocks as they are, host bits
/// cleared.
pub(crate) fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match canonical(IpAddr::V6(v6.network())) {
            IpAddr::V4(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net)
                .trunc(),
            IpAddr::V6(_) => net.trunc(),
        },
        _ => net.trunc(),
    }
}

fn parse_list(entries: Vec<String>) -> Result<Vec<IpNet>, String> {
    let mut nets = Vec::new();
    for entry in entries {
        for net in parse_nets(&entry)? {
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
    }
    Ok(nets)
}

/// A network list's entries: a list, as TOML writes it, or one string of entries separated by
/// commas, as an environment variable holds it (`BOTLINE_EDGE_ALLOWLIST="telegram, 10.0.0.0/8"`).
struct Entries(Vec<String>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of networks, or one string of networks separated by commas")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Entries, E> {
                Ok(Entries(
                    text.split(',')
                        .map(str::trim)
                        .filter(|entry| !entry.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element::<String>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn nets<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    parse_list(Entries::deserialize(deserializer)?.0).map_err(serde::de::Error::custom)
}

fn optional_nets<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<IpNet>>, D::Error> {
    match Option::<Entries>::deserialize(deserializer)?.map(|entries| entries.0) {
        None => Ok(None),
        Some(entries) => parse_list(entries)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Figment;
    use figment::providers::{Format, Serialized, Toml};

    fn from_toml(toml: &str) -> Result<EdgeConfig, Box<figment::Error>> {
        Figment::from(Serialized::defaults(EdgeConfig::default()))
            .merge(Toml::string(toml))
            .extract()
            .map_err(Box::new)
    }

    #[test]
    fn a_list_may_be_one_string_separated_by_commas() {
        let config = from_toml(
            r#"
            allowlist = "telegram, 127.0.0.1 ,"
            trusted_proxies = "10.0.0.0/8"
            "#,
        )
        .unwrap();
        let mut expected = TELEGRAM_WEBHOOK_RANGES.to_vec();
        expected.push("127.0.0.1/32".parse().unwrap());
        assert_eq!(config.allowlist, Some(expected));
        assert_eq!(
            config.trusted_proxies,
            ["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        let error = from_toml(r#"allowlist = "telegram, nowhere""#).unwrap_err();
        assert!(
            error.to_string().contains("\"nowhere\" is not a network"),
            "{error}"
        );
        let error = from_toml("allowlist = 7").unwrap_err();
        assert!(error.to_string().contains("separated by commas"), "{error}");
        // An empty string is an empty allowlist, which validation refuses.
        let empty = from_toml(r#"allowlist = """#).unwrap();
        assert_eq!(empty.validate(), Err(ConfigError::EmptyAllowlist));
    }

    #[test]
    fn defaults_guard_nothing() {
        let config = from_toml("").unwrap();
        assert_eq!(config, EdgeConfig::default());
        assert_eq!(config.allowlist, None);
        assert!(!config.rate_limit.enabled);
        config.validate().unwrap();
        EdgeConfig::telegram_default().validate().unwrap();
    }

    #[test]
    fn reads_lists_words_addresses_and_durations() {
        let config = from_toml(
            r#"
            allowlist = ["telegram", "127.0.0.1", "2001:db8::1/64", "::ffff:10.1.2.3/104"]
            trusted_proxies = ["10.0.0.0/8"]
            proxy_header = "forwarded"
            [rate_limit]
            enabled = true
            rate = 5
            burst = 7
            cleanup_interval = "30s"
            [webapp]
            enabled = true
            max_age = "1h"
            session_ttl = "15m"
            "#,
        )
        .unwrap();
        let allow: Vec<String> = config
            .allowlist
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            allow,
            [
                "149.154.160.0/20",
                "91.108.4.0/22",
                "127.0.0.1/32",
                "2001:db8::/64",
                "10.0.0.0/8"
            ]
        );
        assert_eq!(config.proxy_header, ProxyHeader::Forwarded);
        assert!(config.rate_limit.enabled);
        assert_eq!(config.rate_limit.rate, 5);
        assert_eq!(config.rate_limit.burst, 7);
        assert_eq!(config.rate_limit.cleanup_interval, Duration::from_secs(30));
        assert_eq!(config.webapp.max_age, Duration::from_secs(3600));
        assert_eq!(config.webapp.session_ttl, Duration::from_secs(900));
        assert!(config.webapp.enabled);
    }

    #[test]
    fn refuses_what_cannot_work() {
        assert!(from_toml(r#"allowlist = ["not-a-net"]"#).is_err());
        assert!(from_toml(r#"alowlist = ["telegram"]"#).is_err());
        let empty = from_toml("allowlist = []").unwrap();
        assert_eq!(empty.validate(), Err(ConfigError::EmptyAllowlist));
        let zero = from_toml("[rate_limit]\nrate = 0").unwrap();
        assert_eq!(zero.validate(), Err(ConfigError::Zero("rate_limit.rate")));
        let prefix = from_toml("[rate_limit]\nipv6_prefix = 129").unwrap();
        assert_eq!(prefix.validate(), Err(ConfigError::Ipv6Prefix(129)));
    }
}
