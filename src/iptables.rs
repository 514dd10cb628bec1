//! `signet iptables`: installs and removes the rules that send a network namespace's TCP through
//! its sidecar, as Istio's istio-iptables does in REDIRECT mode. It runs inside the namespace: in
//! Kubernetes as the pod's init container, on one machine as `ip netns exec POD signet iptables`.
//!
//! The capture path (all in the `nat` table, so only a connection's first packet is looked at and
//! conntrack rewrites the rest):
//!
//! ```text
//!  peer ─► PREROUTING ─► SIGNET_INBOUND ─┬─ excluded port ──────────────► RETURN (the app's port as is)
//!                                        └─ SIGNET_IN_REDIRECT ─► REDIRECT --to-ports 15006 (inbound)
//!  app ──► OUTPUT ─► SIGNET_OUTPUT ─┬─ sidecar (uid/gid) to the pod's own address over lo ─► SIGNET_INBOUND
//!                                   ├─ sidecar (uid/gid) anywhere else ───────────────────► RETURN (no loop)
//!                                   ├─ over lo, to localhost, excluded port or CIDR ──────► RETURN
//!                                   └─ SIGNET_REDIRECT ─► REDIRECT --to-ports 15001 (outbound)
//! ```
//!
//! The sidecar's own connections are matched by owner (`--proxy-uid`/`--proxy-gid`) and returned
//! before anything can send them to SIGNET_REDIRECT, so a redirect loop cannot be built: the
//! settings are refused when no owner is given while outbound traffic is captured. Its one
//! deliberate redirect is Istio's: a call to the pod's own address (an app reaching itself through
//! its service) enters the inbound, like a peer's call; the inbound then reaches the app on
//! loopback, which is never redirected (so the inbound's app address must be loopback).
//!
//! What is Signet's is told by name alone: the chains called `SIGNET_*` and the rules elsewhere
//! that jump to them. Installing declares the chains (which creates or flushes them), drops jumps
//! and chains of Signet's that the new rules lack, keeps a jump already in place, and appends the
//! rest, in one `iptables-restore --noflush` transaction per table and family; `--cleanup` deletes
//! exactly those jumps and chains. The rules are made by pure functions ([`Settings::rules`],
//! [`restore_script`], [`cleanup_script`]); the I/O is running `iptables-save` and
//! `iptables-restore` (whichever backend, legacy or nft, `iptables` is on the machine).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::str::FromStr;

use clap::{Args, ValueEnum};

/// Every chain Signet owns starts with this; `--cleanup` removes those chains and nothing else
/// but the jumps into them.
const PREFIX: &str = "SIGNET_";
const INBOUND: &str = "SIGNET_INBOUND";
const IN_REDIRECT: &str = "SIGNET_IN_REDIRECT";
const OUTPUT: &str = "SIGNET_OUTPUT";
const REDIRECT: &str = "SIGNET_REDIRECT";
/// Signet's chains, in the order they are declared.
const CHAINS: [&str; 4] = [INBOUND, IN_REDIRECT, OUTPUT, REDIRECT];

#[derive(Args, Debug)]
pub struct IptablesArgs {
    /// The uid(s) the sidecar runs as, comma-separated (empty for none): their connections are
    /// never sent to the outbound, so the sidecar cannot loop into itself.
    #[arg(long, value_name = "UIDS", default_value = "1337")]
    pub proxy_uid: IdList,
    /// The gid(s) the sidecar runs as, comma-separated (empty for none); a connection matching
    /// either a uid or a gid is the sidecar's.
    #[arg(long, value_name = "GIDS", default_value = "1337")]
    pub proxy_gid: IdList,
    /// The sidecar's outbound listener: captured outbound TCP is redirected to this port.
    #[arg(long, value_name = "PORT", default_value = "15001")]
    pub outbound_port: Port,
    /// The sidecar's inbound listener: captured inbound TCP is redirected to this port. It must
    /// listen on every address (0.0.0.0, and [::] with IPv6): a peer's call arrives on the pod's
    /// address, the sidecar's call to its own pod on loopback.
    #[arg(long, value_name = "PORT", default_value = "15006")]
    pub inbound_port: Port,
    /// Inbound ports to capture: `*` for all (but the excluded ones), a comma-separated list, or
    /// empty for no inbound capture.
    #[arg(long, value_name = "PORTS", default_value = "*")]
    pub inbound_ports: InboundPorts,
    /// Inbound ports never captured with `--inbound-ports *`: Signet's admin (15000: probes and
    /// scraping) and the authority's ports (15012, 15014). Giving the flag replaces the list.
    #[arg(long, value_name = "PORTS", default_value = "15000,15012,15014")]
    pub exclude_inbound_ports: PortList,
    /// Destination ports whose outbound TCP is never captured, comma-separated.
    #[arg(long, value_name = "PORTS", default_value = "")]
    pub exclude_outbound_ports: PortList,
    /// Destinations (IPv4 or IPv6 CIDRs or addresses, comma-separated) never captured outbound.
    #[arg(long, value_name = "CIDRS", default_value = "")]
    pub exclude_outbound_cidrs: CidrList,
    /// Destinations captured outbound: `*` for all, a comma-separated list of CIDRs, or empty for
    /// no outbound capture.
    #[arg(long, value_name = "CIDRS", default_value = "*")]
    pub include_outbound_cidrs: IncludeCidrs,
    /// IPv6 rules (ip6tables): `auto` installs them where the kernel has IPv6 and
    /// ip6tables-restore is installed, `on` requires them, `off` leaves IPv6 alone.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = Ipv6::Auto)]
    pub ipv6: Ipv6,
    /// Print the rules (iptables-restore format, as for a namespace without Signet's rules) and
    /// change nothing; needs neither root nor iptables. With --cleanup: print what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove Signet's chains and the jumps into them, nothing else; succeeds when none are there.
    #[arg(long)]
    pub cleanup: bool,
}

pub fn run(args: IptablesArgs) -> Result<ExitCode, String> {
    if args.cleanup {
        return cleanup(args.ipv6, args.dry_run);
    }
    let settings = Settings::new(&args)?;
    if args.dry_run {
        print!("{}", dry_run(&settings));
        return Ok(ExitCode::SUCCESS);
    }
    install(&settings)
}

// ---- settings -------------------------------------------------------------------------------

/// A TCP port, 1-65535.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port(pub u16);

impl FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Port, String> {
        match s.trim().parse::<u16>() {
            Ok(p) if p != 0 => Ok(Port(p)),
            _ => Err(format!("`{}` is not a port (give a number 1-65535)", s.trim())),
        }
    }
}

/// The non-empty items of a comma-separated list, trimmed.
fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|i| !i.is_empty())
}

/// Adds `item` unless it is already there: a repeated value would only repeat a rule.
fn push_once<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Comma-separated ports; empty for none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl FromStr for PortList {
    type Err = String;
    fn from_str(s: &str) -> Result<PortList, String> {
        let mut ports = Vec::new();
        for item in items(s) {
            push_once(&mut ports, item.parse::<Port>()?.0);
        }
        Ok(PortList(ports))
    }
}

/// `--inbound-ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundPorts {
    /// `*`: every port but the excluded ones.
    All,
    /// Only these ports; none is no inbound capture.
    Only(Vec<u16>),
}

impl FromStr for InboundPorts {
    type Err = String;
    fn from_str(s: &str) -> Result<InboundPorts, String> {
        if s.trim() == "*" {
            return Ok(InboundPorts::All);
        }
        if items(s).any(|i| i == "*") {
            return Err(format!("`{s}`: `*` (all ports) stands alone"));
        }
        Ok(InboundPorts::Only(s.parse::<PortList>()?.0))
    }
}

/// Comma-separated numeric uids or gids; empty for none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdList(pub Vec<u32>);

impl FromStr for IdList {
    type Err = String;
    fn from_str(s: &str) -> Result<IdList, String> {
        let mut ids = Vec::new();
        for item in items(s) {
            let id = item
                .parse::<u32>()
                .map_err(|_| format!("`{item}` is not a numeric id (give numbers, e.g. 1337)"))?;
            push_once(&mut ids, id);
        }
        Ok(IdList(ids))
    }
}

/// An IPv4 or IPv6 network; an address alone is the network of that one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl std::fmt::Display for Cidr {
    /// As iptables-save prints it (RFC 5952 for IPv6, like Rust's `Ipv6Addr`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let bad = || format!("`{s}` is not a CIDR (give e.g. 10.0.0.0/8, 2001:db8::/32 or an address)");
        let (addr, len) = match s.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(len) => len.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
            None => max,
        };
        let (bits, width) = match addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        // A mask of `len` leading ones within `width` bits; `checked_shr` covers len == 0.
        let host_mask = u128::MAX.checked_shr(u32::from(len) + (128 - width)).unwrap_or(0);
        if bits & host_mask != 0 {
            // iptables would quietly drop the host bits; a typo should not widen a rule unseen.
            let network = bits & !host_mask;
            let network: IpAddr = match addr {
                // The value came from a u32 and only lost bits, so it fits.
                IpAddr::V4(_) => std::net::Ipv4Addr::from(network as u32).into(),
                IpAddr::V6(_) => std::net::Ipv6Addr::from(network).into(),
            };
            return Err(format!("`{s}` has host bits set; did you mean {network}/{len}?"));
        }
        Ok(Cidr { addr, len })
    }
}

/// `--exclude-outbound-cidrs`: comma-separated CIDRs; empty for none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

impl FromStr for CidrList {
    type Err = String;
    fn from_str(s: &str) -> Result<CidrList, String> {
        let mut cidrs = Vec::new();
        for item in items(s) {
            if item == "*" {
                return Err(
                    "`*` cannot be excluded; to capture no outbound traffic give --include-outbound-cidrs ''".into(),
                );
            }
            push_once(&mut cidrs, item.parse::<Cidr>()?);
        }
        Ok(CidrList(cidrs))
    }
}

/// `--include-outbound-cidrs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IncludeCidrs {
    /// `*`: every destination but the excluded ones.
    All,
    /// Only these; none is no outbound capture.
    Only(Vec<Cidr>),
}

impl FromStr for IncludeCidrs {
    type Err = String;
    fn from_str(s: &str) -> Result<IncludeCidrs, String> {
        if s.trim() == "*" {
            return Ok(IncludeCidrs::All);
        }
        let mut cidrs = Vec::new();
        for item in items(s) {
            if item == "*" {
                return Err(format!("`{s}`: `*` (all destinations) stands alone"));
            }
            push_once(&mut cidrs, item.parse::<Cidr>()?);
        }
        Ok(IncludeCidrs::Only(cidrs))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Ipv6 {
    /// Where the kernel has IPv6 and ip6tables-restore is installed.
    Auto,
    /// Always; an error if ip6tables is missing.
    On,
    /// Never.
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Loopback: every 127.x address is (not only 127.0.0.1, whose /32 Istio uses), so no
    /// loopback destination can take the sidecar's redirect-to-inbound rule.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
}

/// What to capture, checked as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub proxy_uids: Vec<u32>,
    pub proxy_gids: Vec<u32>,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub inbound_ports: InboundPorts,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
    pub include_outbound_cidrs: IncludeCidrs,
    pub ipv6: Ipv6,
}

impl Settings {
    pub fn new(args: &IptablesArgs) -> Result<Settings, String> {
        let settings = Settings {
            proxy_uids: args.proxy_uid.0.clone(),
            proxy_gids: args.proxy_gid.0.clone(),
            outbound_port: args.outbound_port.0,
            inbound_port: args.inbound_port.0,
            inbound_ports: args.inbound_ports.clone(),
            exclude_inbound_ports: args.exclude_inbound_ports.0.clone(),
            exclude_outbound_ports: args.exclude_outbound_ports.0.clone(),
            exclude_outbound_cidrs: args.exclude_outbound_cidrs.0.clone(),
            include_outbound_cidrs: args.include_outbound_cidrs.clone(),
            ipv6: args.ipv6,
        };
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), String> {
        if self.inbound_port == self.outbound_port {
            return Err(format!(
                "--inbound-port and --outbound-port are both {}: the sidecar's inbound and outbound listeners need \
                 different ports",
                self.inbound_port
            ));
        }
        if let InboundPorts::Only(ports) = &self.inbound_ports
            && let Some(p) = ports.iter().find(|p| self.exclude_inbound_ports.contains(p))
        {
            return Err(format!(
                "port {p} is in both --inbound-ports and --exclude-inbound-ports (default 15000,15012,15014); \
                 remove it from one of them"
            ));
        }
        let inbound = self.inbound_ports != InboundPorts::Only(Vec::new());
        let outbound = self.include_outbound_cidrs != IncludeCidrs::Only(Vec::new());
        if !inbound && !outbound {
            return Err(
                "nothing to capture: --inbound-ports and --include-outbound-cidrs are both empty; to remove \
                 the rules use --cleanup"
                    .into(),
            );
        }
        if outbound && self.proxy_uids.is_empty() && self.proxy_gids.is_empty() {
            return Err(
                "--proxy-uid and --proxy-gid are both empty: the sidecar's own outbound connections \
                 would be redirected back to it, a loop; give the uid or gid the sidecar runs as (1337)"
                    .into(),
            );
        }
        Ok(())
    }

    fn families(&self) -> Vec<Family> {
        match self.ipv6 {
            Ipv6::Off => vec![Family::V4],
            Ipv6::Auto | Ipv6::On => vec![Family::V4, Family::V6],
        }
    }

    /// The rules of one family, grouped with the reason for each group. Pure.
    pub fn rules(&self, family: Family) -> Vec<Group> {
        let mut groups = Vec::new();
        let inbound = self.inbound_ports != InboundPorts::Only(Vec::new());
        if inbound {
            groups.push(Group::new(
                "inbound: TCP arriving from outside the namespace is checked by SIGNET_INBOUND",
                vec![Rule::new("PREROUTING", format!("-p tcp -j {INBOUND}"))],
            ));
            match &self.inbound_ports {
                InboundPorts::All => {
                    groups.push(Group::new(
                        "not captured: --exclude-inbound-ports",
                        self.exclude_inbound_ports
                            .iter()
                            .map(|p| Rule::new(INBOUND, format!("-p tcp -m tcp --dport {p} -j RETURN")))
                            .collect(),
                    ));
                    groups.push(Group::new(
                        "every other port (--inbound-ports *) goes to the sidecar's inbound",
                        vec![Rule::new(INBOUND, format!("-p tcp -j {IN_REDIRECT}"))],
                    ));
                }
                InboundPorts::Only(ports) => groups.push(Group::new(
                    "the ports of --inbound-ports go to the sidecar's inbound",
                    ports
                        .iter()
                        .map(|p| Rule::new(INBOUND, format!("-p tcp -m tcp --dport {p} -j {IN_REDIRECT}")))
                        .collect(),
                )),
            }
            groups.push(Group::new(
                "the sidecar's inbound listener (--inbound-port)",
                vec![Rule::new(
                    IN_REDIRECT,
                    format!("-p tcp -j REDIRECT --to-ports {}", self.inbound_port),
                )],
            ));
        }

        let owners = || {
            let uids = self.proxy_uids.iter().map(|u| format!("--uid-owner {u}"));
            uids.chain(self.proxy_gids.iter().map(|g| format!("--gid-owner {g}")))
        };
        let mut output = Vec::new();
        if inbound {
            output.push(Group::new(
                "the sidecar calling the pod's own address (an app reaching itself through its service) goes \
                 through the inbound like a peer; never loopback, where the inbound reaches the app",
                owners()
                    .map(|o| {
                        let spec = format!("! -d {} -o lo -m owner {o} -j {INBOUND}", family.loopback());
                        Rule::new(OUTPUT, spec)
                    })
                    .collect(),
            ));
        }
        let included: Option<Vec<&Cidr>> = match &self.include_outbound_cidrs {
            IncludeCidrs::All => None,
            IncludeCidrs::Only(cidrs) => Some(cidrs.iter().filter(|c| c.family() == family).collect()),
        };
        let outbound = included.as_ref().is_none_or(|c| !c.is_empty());
        if outbound {
            output.push(Group::new(
                "the sidecar's own connections are never captured: this is what makes a redirect loop impossible",
                owners()
                    .map(|o| Rule::new(OUTPUT, format!("-m owner {o} -j RETURN")))
                    .collect(),
            ));
            output.push(Group::new(
                "the app's connections over lo (to localhost or its own address) are not captured",
                vec![Rule::new(OUTPUT, "-o lo -j RETURN".into())],
            ));
            output.push(Group::new(
                "loopback is never captured (a guard: traffic over lo has returned above)",
                vec![Rule::new(OUTPUT, format!("-d {} -j RETURN", family.loopback()))],
            ));
            output.push(Group::new(
                "not captured: --exclude-outbound-ports",
                self.exclude_outbound_ports
                    .iter()
                    .map(|p| Rule::new(OUTPUT, format!("-p tcp -m tcp --dport {p} -j RETURN")))
                    .collect(),
            ));
            output.push(Group::new(
                "not captured: --exclude-outbound-cidrs",
                self.exclude_outbound_cidrs
                    .iter()
                    .filter(|c| c.family() == family)
                    .map(|c| Rule::new(OUTPUT, format!("-d {c} -j RETURN")))
                    .collect(),
            ));
            output.push(match &included {
                None => Group::new(
                    "everything else (--include-outbound-cidrs *) goes to the sidecar's outbound",
                    vec![Rule::new(OUTPUT, format!("-j {REDIRECT}"))],
                ),
                Some(cidrs) => Group::new(
                    "the destinations of --include-outbound-cidrs go to the sidecar's outbound",
                    cidrs
                        .iter()
                        .map(|c| Rule::new(OUTPUT, format!("-d {c} -j {REDIRECT}")))
                        .collect(),
                ),
            });
            output.push(Group::new(
                "the sidecar's outbound listener (--outbound-port)",
                vec![Rule::new(
                    REDIRECT,
                    format!("-p tcp -j REDIRECT --to-ports {}", self.outbound_port),
                )],
            ));
        }
        output.retain(|g| !g.rules.is_empty());
        if !output.is_empty() {
            groups.push(Group::new(
                "outbound: TCP opened in the namespace is checked by SIGNET_OUTPUT",
                vec![Rule::new("OUTPUT", format!("-p tcp -j {OUTPUT}"))],
            ));
            groups.extend(output);
        }
        groups.retain(|g| !g.rules.is_empty());
        groups
    }
}

// ---- rules and scripts (pure) ---------------------------------------------------------------

/// One rule of the nat table: appended to `chain` with `spec`, written as iptables-save prints
/// it, so a rule in place compares equal to the one Signet would add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub spec: String,
}

impl Rule {
    fn new(chain: &str, spec: String) -> Rule {
        Rule {
            chain: chain.to_string(),
            spec,
        }
    }

    /// A rule in a chain that is not Signet's: a jump into Signet's chains.
    fn is_hook(&self) -> bool {
        !self.chain.starts_with(PREFIX)
    }
}

/// Rules that are there for one reason, printed as a comment above them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub why: String,
    pub rules: Vec<Rule>,
}

impl Group {
    fn new(why: &str, rules: Vec<Rule>) -> Group {
        Group {
            why: why.to_string(),
            rules,
        }
    }
}

/// One table of an `iptables-save` dump.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SavedTable {
    pub name: String,
    pub chains: Vec<String>,
    pub rules: Vec<Rule>,
}

impl SavedTable {
    /// The rules outside Signet's chains that jump to one of them, in order.
    fn jumps_to_signet(&self) -> Vec<&Rule> {
        self.rules
            .iter()
            .filter(|r| r.is_hook() && target(&r.spec).is_some_and(|t| t.starts_with(PREFIX)))
            .collect()
    }

    fn signet_chains(&self) -> Vec<&str> {
        self.chains
            .iter()
            .map(String::as_str)
            .filter(|c| c.starts_with(PREFIX))
            .collect()
    }
}

/// Parses `iptables-save` output (comments, `*table`, `:chain`, `-A chain spec`, `COMMIT`).
pub fn parse_save(text: &str) -> Vec<SavedTable> {
    let mut tables: Vec<SavedTable> = Vec::new();
    for line in text.lines().map(str::trim_end) {
        if let Some(name) = line.strip_prefix('*') {
            tables.push(SavedTable {
                name: name.to_string(),
                ..SavedTable::default()
            });
            continue;
        }
        let Some(table) = tables.last_mut() else { continue };
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(chain) = decl.split_whitespace().next() {
                table.chains.push(chain.to_string());
            }
        } else if let Some(rule) = line.strip_prefix("-A ")
            && let Some((chain, spec)) = rule.split_once(' ')
        {
            table.rules.push(Rule::new(chain, spec.to_string()));
        }
    }
    tables
}

/// The target of a rule (`-j X` or `-g X`), quotes in comments and the like respected.
fn target(spec: &str) -> Option<String> {
    let words = split_words(spec);
    let at = words.iter().position(|w| w == "-j" || w == "-g")?;
    words.get(at + 1).cloned()
}

/// Splits a rule the way iptables-restore does: on blanks, except inside double quotes.
fn split_words(spec: &str) -> Vec<String> {
    let (mut words, mut word, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    let mut started = false;
    for c in spec.chars() {
        if escaped {
            word.push(c);
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
            started = true;
        } else if c.is_whitespace() && !quoted {
            if started {
                words.push(std::mem::take(&mut word));
                started = false;
            }
        } else {
            word.push(c);
            started = true;
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// The `iptables-restore --noflush` script that installs `groups` into the nat table, given what
/// the table holds now (`None`: nothing of Signet's). Pure.
///
/// Declaring Signet's chains creates them, or flushes them if they exist; a jump into them that
/// is already in place is kept (so its position and the result of a second run are the same);
/// every other jump into a Signet chain, and every Signet chain these rules do not use, goes.
pub fn restore_script(groups: &[Group], present: Option<&SavedTable>) -> String {
    let rules = || groups.iter().flat_map(|g| &g.rules);
    let chains: Vec<&str> = CHAINS
        .into_iter()
        .filter(|c| rules().any(|r| r.chain == *c || target(&r.spec).as_deref() == Some(c)))
        .collect();
    let mut existing: Vec<&Rule> = present.map(SavedTable::jumps_to_signet).unwrap_or_default();
    // Each wanted jump takes one identical jump in place, if any; what is left over is stale.
    let mut kept = Vec::new();
    for rule in rules().filter(|r| r.is_hook()) {
        if let Some(at) = existing.iter().position(|e| *e == rule) {
            existing.remove(at);
            kept.push(rule);
        }
    }
    let stale_chains: Vec<&str> = present
        .map(SavedTable::signet_chains)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !chains.contains(c))
        .collect();

    let mut out = String::from("*nat\n");
    for chain in &chains {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    if !existing.is_empty() || !stale_chains.is_empty() {
        out.push_str("# Signet's jumps and chains that these rules no longer have\n");
    }
    for rule in &existing {
        let _ = writeln!(out, "-D {} {}", rule.chain, rule.spec);
    }
    remove_chains(&mut out, &stale_chains);
    for group in groups {
        let new: Vec<&Rule> = group.rules.iter().filter(|r| !kept.contains(r)).collect();
        if new.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# {}", group.why);
        for rule in new {
            let _ = writeln!(out, "-A {} {}", rule.chain, rule.spec);
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// Flushes, then deletes, `chains`: a chain cannot go while another still jumps to it.
fn remove_chains(out: &mut String, chains: &[&str]) {
    for chain in chains {
        let _ = writeln!(out, "-F {chain}");
    }
    for chain in chains {
        let _ = writeln!(out, "-X {chain}");
    }
}

/// What `--cleanup` removed (or would remove) from one family.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removal {
    pub script: String,
    pub chains: Vec<String>,
    pub jumps: usize,
}

/// The `iptables-restore --noflush` script that removes Signet's chains and the jumps into them
/// from every table of an `iptables-save` dump; `None` when there is nothing of Signet's. Pure.
pub fn cleanup_script(saved: &[SavedTable]) -> Option<Removal> {
    let mut removal = Removal::default();
    for table in saved {
        let jumps = table.jumps_to_signet();
        let chains = table.signet_chains();
        if jumps.is_empty() && chains.is_empty() {
            continue;
        }
        let _ = writeln!(removal.script, "*{}", table.name);
        for rule in &jumps {
            let _ = writeln!(removal.script, "-D {} {}", rule.chain, rule.spec);
        }
        remove_chains(&mut removal.script, &chains);
        removal.script.push_str("COMMIT\n");
        removal.jumps += jumps.len();
        removal
            .chains
            .extend(chains.iter().map(|c| format!("{}/{c}", table.name)));
    }
    (!removal.script.is_empty()).then_some(removal)
}

/// `--dry-run`: each family's script for a namespace without Signet's rules. Pure.
pub fn dry_run(settings: &Settings) -> String {
    let mut out = String::new();
    for family in settings.families() {
        let when = match (family, settings.ipv6) {
            (Family::V6, Ipv6::Auto) => " (--ipv6 auto: where the kernel has IPv6 and ip6tables-restore is installed)",
            _ => "",
        };
        let _ = writeln!(out, "# {}: {} --noflush{when}", family.name(), family.restore());
        out.push_str(&restore_script(&settings.rules(family), None));
    }
    out
}

// ---- I/O: iptables-save, iptables-restore ---------------------------------------------------

/// The iptables tools of one family, found on PATH.
struct Tools {
    family: Family,
    save: PathBuf,
    restore: PathBuf,
}

/// The iptables tools of `family`, or why not (`Err(what is missing)`).
fn find_tools(family: Family) -> Result<Tools, String> {
    let restore = find_on_path(family.restore()).ok_or_else(|| family.restore().to_string())?;
    let save = find_on_path(family.save()).ok_or_else(|| family.save().to_string())?;
    Ok(Tools { family, save, restore })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

fn not_installed(what: &str) -> String {
    format!(
        "{what} is not installed (not found on PATH): install iptables (Debian/Ubuntu: apt-get install iptables); \
         --dry-run prints the rules without it"
    )
}

/// The families to work on: IPv4 always; IPv6 as `--ipv6` says, with a note when `auto` skips it.
fn tools(ipv6: Ipv6) -> Result<Vec<Tools>, String> {
    let mut found = vec![find_tools(Family::V4).map_err(|missing| not_installed(&missing))?];
    match ipv6 {
        Ipv6::Off => {}
        Ipv6::On => {
            found.push(find_tools(Family::V6).map_err(|missing| format!("--ipv6 on: {}", not_installed(&missing)))?)
        }
        Ipv6::Auto if !kernel_has_ipv6() => println!("IPv6: left alone: this kernel has no IPv6 (--ipv6 auto)"),
        Ipv6::Auto => match find_tools(Family::V6) {
            Ok(t) => found.push(t),
            Err(missing) => eprintln!(
                "signet: warning: IPv6 is not captured: {missing} is not installed (--ipv6 auto; --ipv6 on makes \
                 this an error)"
            ),
        },
    }
    Ok(found)
}

fn kernel_has_ipv6() -> bool {
    Path::new("/proc/net/if_inet6").exists()
}

/// Reading or changing iptables needs CAP_NET_ADMIN in the namespace; say so before iptables
/// does, in its words. `what` is "changing" (install) or "reading and changing" (cleanup).
fn check_privileges(what: &str) -> Result<(), String> {
    const CAP_NET_ADMIN: u32 = 12;
    let effective = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
        u64::from_str_radix(hex.trim(), 16).ok()
    });
    match effective {
        Some(caps) if caps & (1 << CAP_NET_ADMIN) == 0 => Err(format!(
            "{what} iptables needs root (CAP_NET_ADMIN, and CAP_NET_RAW for iptables-legacy) in the network \
             namespace: run it as root, e.g. `sudo ip netns exec POD signet iptables`, or in Kubernetes as an init \
             container with capabilities NET_ADMIN and NET_RAW{}",
            if what == "changing" {
                "; --dry-run prints the rules without either"
            } else {
                ""
            }
        )),
        // Unknown (no /proc): iptables will tell.
        _ => Ok(()),
    }
}

/// stderr of a failed tool as one line, without its usage hint.
fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Try `"))
        .collect();
    if lines.is_empty() {
        "no message".into()
    } else {
        lines.join("; ")
    }
}

impl Tools {
    fn save(&self) -> Result<Vec<SavedTable>, String> {
        let out = Command::new(&self.save)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.save.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed: {}", self.family.save(), one_line(&out.stderr)));
        }
        Ok(parse_save(&String::from_utf8_lossy(&out.stdout)))
    }

    fn restore(&self, script: &str) -> Result<(), String> {
        let mut child = Command::new(&self.restore)
            // --wait: iptables-legacy takes a lock shared by every namespace of the machine.
            .args(["--noflush", "--wait", "10"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.restore.display()))?;
        // The script is a few KiB and the tool reads all of it before it writes anything.
        let written = child.stdin.take().map(|mut stdin| stdin.write_all(script.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{} did not finish: {e}", self.family.restore()))?;
        if !out.status.success() {
            return Err(format!(
                "{} --noflush refused the {} rules, so that table is unchanged: {}",
                self.family.restore(),
                self.family.name(),
                one_line(&out.stderr)
            ));
        }
        match written {
            Some(Err(e)) => Err(format!("cannot write to {}: {e}", self.family.restore())),
            _ => Ok(()),
        }
    }

    /// Removes what is Signet's; the chains removed, if any.
    fn remove(&self) -> Result<Option<Removal>, String> {
        let Some(removal) = cleanup_script(&self.save()?) else {
            return Ok(None);
        };
        self.restore(&removal.script)?;
        Ok(Some(removal))
    }
}

fn install(settings: &Settings) -> Result<ExitCode, String> {
    let mut tools = tools(settings.ipv6)?;
    check_privileges("changing")?;
    // IPv6 first: it is the family more likely to be refused (no ip6table_nat), and a refusal
    // before IPv4 is touched leaves nothing half done.
    tools.reverse();
    let mut done: Vec<&Tools> = Vec::new();
    for tool in &tools {
        let result = tool.save().and_then(|saved| {
            let present = saved.iter().find(|t| t.name == "nat");
            tool.restore(&restore_script(&settings.rules(tool.family), present))
        });
        if let Err(e) = result {
            let undone = done
                .iter()
                .map(|t| t.remove().map(|_| t.family.name()))
                .collect::<Result<Vec<_>, _>>();
            let undone = match undone {
                Ok(families) if families.is_empty() => String::new(),
                Ok(families) => format!(" ({} rules removed again)", families.join(", ")),
                Err(why) => format!(" (and removing the rules already installed failed: {why})"),
            };
            let hint = if tool.family == Family::V6 {
                "; --ipv6 off captures IPv4 only"
            } else {
                ""
            };
            return Err(format!("{e}{undone}{hint}"));
        }
        done.push(tool);
    }
    for tool in tools.iter().rev() {
        let chains: Vec<&str> = CHAINS
            .into_iter()
            .filter(|c| {
                settings
                    .rules(tool.family)
                    .iter()
                    .flat_map(|g| &g.rules)
                    .any(|r| r.chain == *c)
            })
            .collect();
        if chains.is_empty() {
            println!("{}: nothing to capture; no rules of Signet's", tool.family.name());
        } else {
            println!(
                "{}: installed {} (table nat, {} --noflush)",
                tool.family.name(),
                chains.join(", "),
                tool.family.restore()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cleanup(ipv6: Ipv6, dry_run: bool) -> Result<ExitCode, String> {
    let tools = tools(ipv6)?;
    check_privileges("reading and changing")?;
    for tool in &tools {
        let name = tool.family.name();
        let removal = if dry_run {
            cleanup_script(&tool.save()?)
        } else {
            tool.remove()?
        };
        match removal {
            None => println!("{name}: nothing of Signet's is installed"),
            Some(r) if dry_run => {
                println!("# {name}: {} --noflush", tool.family.restore());
                print!("{}", r.script);
            }
            Some(r) => println!(
                "{name}: removed {} and {} jump(s) into them",
                r.chains.join(", "),
                r.jumps
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, String> {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: IptablesArgs,
        }
        let cli = Cli::try_parse_from(std::iter::once("signet-iptables").chain(args.iter().copied()))
            .map_err(|e| e.to_string().lines().next().unwrap_or_default().to_string())?;
        Settings::new(&cli.args)
    }

    fn specs(groups: &[Group]) -> Vec<String> {
        groups
            .iter()
            .flat_map(|g| &g.rules)
            .map(|r| format!("-A {} {}", r.chain, r.spec))
            .collect()
    }

    #[test]
    fn default_rules_follow_istio_redirect_mode() {
        let s = settings(&[]).unwrap();
        assert_eq!(
            specs(&s.rules(Family::V4)),
            [
                "-A PREROUTING -p tcp -j SIGNET_INBOUND",
                "-A SIGNET_INBOUND -p tcp -m tcp --dport 15000 -j RETURN",
                "-A SIGNET_INBOUND -p tcp -m tcp --dport 15012 -j RETURN",
                "-A SIGNET_INBOUND -p tcp -m tcp --dport 15014 -j RETURN",
                "-A SIGNET_INBOUND -p tcp -j SIGNET_IN_REDIRECT",
                "-A SIGNET_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
                "-A OUTPUT -p tcp -j SIGNET_OUTPUT",
                "-A SIGNET_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --uid-owner 1337 -j SIGNET_INBOUND",
                "-A SIGNET_OUTPUT ! -d 127.0.0.0/8 -o lo -m owner --gid-owner 1337 -j SIGNET_INBOUND",
                "-A SIGNET_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A SIGNET_OUTPUT -m owner --gid-owner 1337 -j RETURN",
                "-A SIGNET_OUTPUT -o lo -j RETURN",
                "-A SIGNET_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A SIGNET_OUTPUT -j SIGNET_REDIRECT",
                "-A SIGNET_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            ]
        );
        let v6 = specs(&s.rules(Family::V6));
        assert!(v6.contains(&"-A SIGNET_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1337 -j SIGNET_INBOUND".into()));
        assert!(v6.contains(&"-A SIGNET_OUTPUT -d ::1/128 -j RETURN".into()));
        assert!(!v6.iter().any(|r| r.contains("127.0.0.0/8")));
    }

    /// Whatever the settings, no connection of the sidecar's reaches SIGNET_REDIRECT: each owner
    /// RETURN comes before the first jump to it, and the settings without owners are refused.
    #[test]
    fn the_sidecar_is_returned_before_any_outbound_redirect() {
        for args in [
            &[][..],
            &["--proxy-gid", ""],
            &["--proxy-uid", "", "--proxy-gid", "7,8"],
            &[
                "--include-outbound-cidrs",
                "10.0.0.0/8,fd00::/8",
                "--exclude-outbound-ports",
                "22",
            ],
            &["--inbound-ports", ""],
        ] {
            let s = settings(args).unwrap();
            for family in [Family::V4, Family::V6] {
                let rules = specs(&s.rules(family));
                let first_redirect = rules.iter().position(|r| r.ends_with(&format!("-j {REDIRECT}")));
                let Some(first_redirect) = first_redirect else { continue };
                for owner in s
                    .proxy_uids
                    .iter()
                    .map(|u| format!("--uid-owner {u} -j RETURN"))
                    .chain(s.proxy_gids.iter().map(|g| format!("--gid-owner {g} -j RETURN")))
                {
                    let at = rules.iter().position(|r| r.ends_with(&owner));
                    assert!(at.is_some_and(|at| at < first_redirect), "{args:?} {family:?}: {owner}");
                }
            }
        }
        let loop_ = settings(&["--proxy-uid", "", "--proxy-gid", ""]).unwrap_err();
        assert!(loop_.contains("a loop"), "{loop_}");
        // Without outbound capture there is nothing to loop through.
        settings(&["--proxy-uid", "", "--proxy-gid", "", "--include-outbound-cidrs", ""]).unwrap();
    }

    #[test]
    fn inbound_and_outbound_selections() {
        let s = settings(&[
            "--inbound-ports",
            "8000, 9000,8000",
            "--include-outbound-cidrs",
            "10.96.0.0/12",
            "--exclude-outbound-cidrs",
            "10.96.0.1,2001:db8::/32",
        ])
        .unwrap();
        let v4 = specs(&s.rules(Family::V4));
        assert!(v4.contains(&"-A SIGNET_INBOUND -p tcp -m tcp --dport 8000 -j SIGNET_IN_REDIRECT".into()));
        assert!(v4.contains(&"-A SIGNET_INBOUND -p tcp -m tcp --dport 9000 -j SIGNET_IN_REDIRECT".into()));
        assert_eq!(v4.iter().filter(|r| r.contains("--dport 8000")).count(), 1);
        assert!(!v4.iter().any(|r| r.contains("15000")), "exclusions only apply to `*`");
        assert!(v4.contains(&"-A SIGNET_OUTPUT -d 10.96.0.1/32 -j RETURN".into()));
        assert!(v4.contains(&"-A SIGNET_OUTPUT -d 10.96.0.0/12 -j SIGNET_REDIRECT".into()));
        assert!(!v4.iter().any(|r| r.contains("2001:db8")));
        // IPv6 has no included destination: no outbound capture there, inbound as in IPv4.
        let v6 = specs(&s.rules(Family::V6));
        assert!(!v6.iter().any(|r| r.contains(REDIRECT)), "{v6:#?}");
        assert!(v6.contains(&"-A SIGNET_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1337 -j SIGNET_INBOUND".into()));

        let no_inbound = specs(&settings(&["--inbound-ports", ""]).unwrap().rules(Family::V4));
        assert!(!no_inbound.iter().any(|r| r.contains("INBOUND")), "{no_inbound:#?}");
        let no_outbound = specs(&settings(&["--include-outbound-cidrs", ""]).unwrap().rules(Family::V4));
        assert!(
            !no_outbound
                .iter()
                .any(|r| r.contains(REDIRECT) || (r.contains("RETURN") && r.contains("OUTPUT")))
        );
        assert!(no_outbound.contains(&"-A OUTPUT -p tcp -j SIGNET_OUTPUT".into()));
    }

    #[test]
    fn bad_values_name_their_flag_and_what_to_do() {
        for (args, want) in [
            (
                &["--exclude-inbound-ports", "15000,abc"][..],
                "'--exclude-inbound-ports <PORTS>': `abc` is not a port",
            ),
            (&["--inbound-ports", "0"], "`0` is not a port"),
            (&["--inbound-ports", "*,80"], "`*` (all ports) stands alone"),
            (
                &["--outbound-port", "70000"],
                "'--outbound-port <PORT>': `70000` is not a port",
            ),
            (
                &["--proxy-uid", "envoy"],
                "'--proxy-uid <UIDS>': `envoy` is not a numeric id",
            ),
            (
                &["--exclude-outbound-cidrs", "10.0.0.0/33"],
                "`10.0.0.0/33` is not a CIDR",
            ),
            (
                &["--exclude-outbound-cidrs", "10.1.2.3/8"],
                "has host bits set; did you mean 10.0.0.0/8?",
            ),
            (&["--include-outbound-cidrs", "fd00::1/8"], "did you mean fd00::/8?"),
            (&["--exclude-outbound-cidrs", "*"], "give --include-outbound-cidrs ''"),
            (
                &["--inbound-port", "15001"],
                "--inbound-port and --outbound-port are both 15001",
            ),
            (
                &["--inbound-ports", "80,15000"],
                "port 15000 is in both --inbound-ports and --exclude-inbound-ports",
            ),
            (
                &["--inbound-ports", "", "--include-outbound-cidrs", ""],
                "nothing to capture",
            ),
            (&["--ipv6", "maybe"], "'--ipv6 <WHEN>'"),
        ] {
            let err = settings(args).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().to_string(), "0.0.0.0/0");
        assert_eq!("::/0".parse::<Cidr>().unwrap().to_string(), "::/0");
        assert_eq!("2001:DB8::".parse::<Cidr>().unwrap().to_string(), "2001:db8::/128");
    }

    const SAVED: &str = "# Generated by iptables-save v1.8.9
*mangle
:PREROUTING ACCEPT [10:600]
:SIGNET_OLD - [0:0]
-A PREROUTING -p udp -j SIGNET_OLD
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:APP - [0:0]
:SIGNET_INBOUND - [0:0]
:SIGNET_OUTPUT - [0:0]
:SIGNET_GONE - [0:0]
-A PREROUTING -p tcp -j SIGNET_INBOUND
-A PREROUTING -p tcp -m tcp --dport 9 -j APP
-A OUTPUT -p tcp -j SIGNET_OUTPUT
-A OUTPUT -m comment --comment \"not -j SIGNET_X\" -j APP
-A OUTPUT -p tcp -j SIGNET_OUTPUT
-A OUTPUT -p udp -j SIGNET_GONE
-A SIGNET_INBOUND -p tcp -j SIGNET_GONE
COMMIT
";

    #[test]
    fn a_second_install_keeps_jumps_and_drops_what_is_stale() {
        let s = settings(&[]).unwrap();
        let saved = parse_save(SAVED);
        let nat = saved.iter().find(|t| t.name == "nat");
        let script = restore_script(&s.rules(Family::V4), nat);
        let lines: Vec<&str> = script.lines().filter(|l| !l.starts_with('#')).collect();
        // Declared (created or flushed), the duplicate and the stale jump deleted, the stale
        // chain flushed and deleted, the two jumps in place kept (not appended again).
        assert_eq!(
            &lines[..5],
            [
                "*nat",
                ":SIGNET_INBOUND - [0:0]",
                ":SIGNET_IN_REDIRECT - [0:0]",
                ":SIGNET_OUTPUT - [0:0]",
                ":SIGNET_REDIRECT - [0:0]",
            ]
        );
        assert_eq!(
            &lines[5..9],
            [
                "-D OUTPUT -p tcp -j SIGNET_OUTPUT",
                "-D OUTPUT -p udp -j SIGNET_GONE",
                "-F SIGNET_GONE",
                "-X SIGNET_GONE",
            ]
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT"))
        );
        assert!(
            !lines.iter().any(|l| l.contains("APP")),
            "never touches what is not Signet's"
        );
        assert_eq!(lines.last(), Some(&"COMMIT"));
        // Nothing in place: the jumps are appended.
        let fresh = restore_script(&s.rules(Family::V4), None);
        assert!(fresh.contains("\n-A PREROUTING -p tcp -j SIGNET_INBOUND\n"));
        assert!(!fresh.contains("-D ") && !fresh.contains("-X "));
    }

    #[test]
    fn cleanup_removes_exactly_signets_chains_and_jumps() {
        let removal = cleanup_script(&parse_save(SAVED)).unwrap();
        assert_eq!(
            removal.script,
            "*mangle
-D PREROUTING -p udp -j SIGNET_OLD
-F SIGNET_OLD
-X SIGNET_OLD
COMMIT
*nat
-D PREROUTING -p tcp -j SIGNET_INBOUND
-D OUTPUT -p tcp -j SIGNET_OUTPUT
-D OUTPUT -p tcp -j SIGNET_OUTPUT
-D OUTPUT -p udp -j SIGNET_GONE
-F SIGNET_INBOUND
-F SIGNET_OUTPUT
-F SIGNET_GONE
-X SIGNET_INBOUND
-X SIGNET_OUTPUT
-X SIGNET_GONE
COMMIT
"
        );
        assert_eq!(removal.jumps, 5);
        assert_eq!(
            cleanup_script(&parse_save("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j APP\nCOMMIT\n")),
            None
        );
        assert_eq!(cleanup_script(&[]), None);
    }

    #[test]
    fn targets_respect_quotes() {
        assert_eq!(target("-p tcp -j SIGNET_INBOUND").as_deref(), Some("SIGNET_INBOUND"));
        assert_eq!(
            target("-m comment --comment \"a -j SIGNET_X \\\"q\\\"\" -g APP").as_deref(),
            Some("APP")
        );
        assert_eq!(target("-p tcp"), None);
        assert_eq!(split_words(r#"a "b c" "" d"#), ["a", "b c", "", "d"]);
    }
}
