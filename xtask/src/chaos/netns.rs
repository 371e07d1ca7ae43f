//! A network namespace joined to the host by a /30 veth pair, for the node `chaos` partitions
//! away: with the host's end down no packet passes either way, which is what a cut cable does
//! (no iptables here, and `tc netem` does not work). Removed on drop; one left behind by a
//! killed run is removed by the next.

use std::net::Ipv4Addr;
use std::process::Command;

use natter_localinfra::{NodePlacement, effective_uid, is_alive};

use super::schedule::{NODES, PARTITIONED_NODE};

const NAMESPACE_PREFIX: &str = "natter-chaos-";

/// The namespace and the veth pair; removed on drop.
pub struct Partition {
    namespace: String,
    host_link: String,
    host_side: Ipv4Addr,
    namespace_side: Ipv4Addr,
}

impl Partition {
    /// Creates `natter-chaos-<pid>` and its link, or says why it cannot.
    pub fn create() -> Result<Self, String> {
        match effective_uid() {
            Ok(0) => {}
            Ok(uid) => return Err(format!("not root (uid {uid}): `ip netns` needs root")),
            Err(error) => return Err(format!("cannot read the effective uid: {error}")),
        }
        remove_abandoned();
        let pid = std::process::id();
        let (host_side, namespace_side) = subnet(pid);
        let partition = Self {
            namespace: format!("{NAMESPACE_PREFIX}{pid}"),
            host_link: format!("ncH{pid}"),
            host_side,
            namespace_side,
        };
        let addresses = ip(&["-4", "-o", "addr"])?;
        if addresses.contains(&format!("inet {host_side}/"))
            || addresses.contains(&format!("inet {namespace_side}/"))
        {
            return Err(format!(
                "{host_side} or {namespace_side} is already in use here"
            ));
        }
        ip(&["netns", "add", &partition.namespace])?;
        // From here on, a failure drops `partition`, which deletes the namespace.
        partition.join()?;
        Ok(partition)
    }

    /// The veth pair, one end moved into the namespace, both addressed and up.
    fn join(&self) -> Result<(), String> {
        let inner = format!("ncN{}", std::process::id());
        let ns = self.namespace.as_str();
        let host_cidr = format!("{}/30", self.host_side);
        let namespace_cidr = format!("{}/30", self.namespace_side);
        ip(&[
            "link",
            "add",
            &self.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", ns])?;
        ip(&["addr", "add", &host_cidr, "dev", &self.host_link])?;
        ip(&["link", "set", &self.host_link, "up"])?;
        ip(&[
            "netns",
            "exec",
            ns,
            "ip",
            "addr",
            "add",
            &namespace_cidr,
            "dev",
            &inner,
        ])?;
        ip(&["netns", "exec", ns, "ip", "link", "set", &inner, "up"])?;
        ip(&["netns", "exec", ns, "ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Every node but the last on the host's end of the link (a local address, reachable from
    /// the host whether the link is up or not), the last inside the namespace.
    pub fn placements(&self) -> Vec<NodePlacement> {
        (0..NODES)
            .map(|i| {
                if i == PARTITIONED_NODE {
                    NodePlacement {
                        host: self.namespace_side,
                        prefix: ["ip", "netns", "exec", &self.namespace]
                            .map(str::to_owned)
                            .to_vec(),
                        own_process_group: true,
                    }
                } else {
                    NodePlacement {
                        host: self.host_side,
                        prefix: Vec::new(),
                        own_process_group: true,
                    }
                }
            })
            .collect()
    }

    pub fn cut(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_link, "down"]).map_err(anyhow::Error::msg)?;
        Ok(())
    }

    pub fn heal(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_link, "up"]).map_err(anyhow::Error::msg)?;
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth end inside it, and with it the pair.
        if let Err(error) = ip(&["netns", "del", &self.namespace]) {
            eprintln!(
                "error removing network namespace {}: {error}",
                self.namespace
            );
        }
        // Left only when the namespace was never made to hold its end.
        let _ = ip(&["link", "del", &self.host_link]);
    }
}

/// A /30 picked by pid in 10.211.0.0/16, so parallel runs do not share one: the host's end
/// and the namespace's.
fn subnet(pid: u32) -> (Ipv4Addr, Ipv4Addr) {
    let third = u8::try_from((pid >> 6) & 0xff).unwrap_or(0);
    let base = u8::try_from((pid & 0x3f) << 2).unwrap_or(0);
    (
        Ipv4Addr::new(10, 211, third, base + 1),
        Ipv4Addr::new(10, 211, third, base + 2),
    )
}

/// Deletes namespaces of chaos runs whose process is gone (killed before it could clean up).
fn remove_abandoned() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(pid) = name
            .strip_prefix(NAMESPACE_PREFIX)
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !is_alive(pid) && ip(&["netns", "del", name]).is_ok() {
            eprintln!("removed network namespace {name}, left by an earlier chaos run");
        }
    }
}

/// `ip <args>`: its output, or its error output.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("running `ip {}`: {error}", args.join(" ")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_a_slash_30_per_pid() {
        assert_eq!(
            subnet(1),
            (Ipv4Addr::new(10, 211, 0, 5), Ipv4Addr::new(10, 211, 0, 6))
        );
        let (host, inner) = subnet(4_194_303);
        assert_eq!((host.octets()[3], inner.octets()[3]), (253, 254));
        assert_ne!(subnet(64), subnet(0));
    }
}
