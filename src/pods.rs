//! Pods on one machine: each workload is a network namespace with its own IP on a bridge, the
//! way a node gives each pod its own network. The bridge lives in a namespace of its own (the
//! hub), so nothing touches the host's network: traffic stays between addresses of namespaces
//! made here. Service names resolve through `/etc/netns/<namespace>/hosts`, which `ip netns exec`
//! mounts over `/etc/hosts`. Everything is removed on drop, and [`PodNet::create`] first removes
//! what an earlier run with the same prefix left behind (killed, say).
//!
//! Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and `ip` (iproute2).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The pods' subnets: 10.88.0.0/24 and fd88::/64 (unique local), a pod's addresses
/// 10.88.0.(index + 2) and fd88::(index + 2). Each [`PodNet`] has its own hub, so two of them
/// never see each other even with the same addresses.
const SUBNET: [u8; 3] = [10, 88, 0];
const SUBNET6: u16 = 0xfd88;
const BRIDGE: &str = "signet0";

#[derive(Clone, Debug)]
pub struct Pod {
    /// The workload's name (`httpbin-foo`).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Where the host has IPv6; the hosts file names only `ip`.
    pub ip6: Option<Ipv6Addr>,
}

/// A set of pods on one bridge. Dropping it removes every namespace, link and hosts file.
#[derive(Debug)]
pub struct PodNet {
    prefix: String,
    hub: String,
    pub pods: Vec<Pod>,
}

/// Runs `ip ARGS`, failing with what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip` ({e}); install iproute2"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces `ip netns` knows.
fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn hosts_dir(netns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(netns)
}

/// Whether this process may create network namespaces (root, in practice).
pub fn can_create() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("pods are network namespaces, which need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)".into());
    }
    Command::new("ip")
        .arg("-V")
        .output()
        .map_err(|e| format!("cannot run `ip` ({e}); install iproute2"))?;
    Ok(())
}

/// Removes every namespace (and hosts file) named `<prefix>-…`.
pub fn remove_all(prefix: &str) {
    let mine = format!("{prefix}-");
    for ns in namespaces().into_iter().filter(|n| n.starts_with(&mine)) {
        // Processes an earlier, killed run left in it would outlive the name.
        let pids = Command::new("ip").args(["netns", "pids", &ns]).output();
        for pid in pids
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill has no memory effects; the pid is one `ip` reported in our namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = ip(&["netns", "del", &ns]);
        let _ = std::fs::remove_dir_all(hosts_dir(&ns));
    }
}

impl PodNet {
    /// Creates the hub with its bridge and one namespace per name in `pods`, and writes `hosts`
    /// (`name → pod`, e.g. `httpbin.foo → httpbin-foo`) into every pod's hosts file.
    pub fn create(prefix: &str, pods: &[&str], hosts: &[(&str, &str)]) -> Result<PodNet, String> {
        can_create()?;
        remove_all(prefix);
        let hub = format!("{prefix}-hub");
        let mut net = PodNet {
            prefix: prefix.to_string(),
            hub: hub.clone(),
            pods: Vec::new(),
        };
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", BRIDGE, "up"])?;
        for (i, name) in pods.iter().enumerate() {
            let netns = format!("{prefix}-{name}");
            let addr = Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], i as u8 + 2);
            let addr6 = Ipv6Addr::new(SUBNET6, 0, 0, 0, 0, 0, 0, i as u16 + 2);
            ip(&["netns", "add", &netns])?;
            let has_ipv6 = std::path::Path::new("/proc/net/if_inet6").exists();
            net.pods.push(Pod {
                name: name.to_string(),
                netns: netns.clone(),
                ip: addr,
                ip6: has_ipv6.then_some(addr6),
            });
            let port = format!("p{i}");
            ip(&[
                "-n", &netns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &hub,
            ])?;
            ip(&["-n", &netns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            if has_ipv6 {
                // nodad: usable at once, without duplicate address detection's delay.
                ip(&[
                    "-n",
                    &netns,
                    "addr",
                    "add",
                    &format!("{addr6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ])?;
            }
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            ip(&["-n", &hub, "link", "set", &port, "master", BRIDGE])?;
            ip(&["-n", &hub, "link", "set", &port, "up"])?;
        }
        let mut table = String::from("127.0.0.1 localhost\n");
        for (host, pod) in hosts {
            let pod = net
                .pod(pod)
                .ok_or_else(|| format!("hosts: {host} names {pod}, which is not a pod here"))?;
            table.push_str(&format!("{} {host}\n", pod.ip));
        }
        for pod in &net.pods {
            let dir = hosts_dir(&pod.netns);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::write(dir.join("hosts"), &table).map_err(|e| format!("{}/hosts: {e}", dir.display()))?;
        }
        Ok(net)
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// `cmd` to run inside `pod`'s namespace (`ip netns exec`, which also mounts its hosts
    /// file over /etc/hosts).
    pub fn command(&self, pod: &str, program: &str) -> Command {
        let netns = self.pod(pod).map(|p| p.netns.clone()).unwrap_or_default();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns, program]);
        cmd
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = ip(&["netns", "del", &pod.netns]);
            let _ = std::fs::remove_dir_all(hosts_dir(&pod.netns));
        }
        let _ = ip(&["netns", "del", &self.hub]);
        // Anything else an interrupted create left.
        remove_all(&self.prefix);
    }
}
