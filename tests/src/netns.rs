//! Network namespaces for [`crate::cluster::Options::netns`]: each node of a cluster runs in
//! a namespace of its own (its processes started with `ip netns exec`), with an address on a
//! bridge the test process is on too, so clients reach every node. A partition
//! ([`Net::cut`]) adds blackhole routes between one node and each of its peers, in both
//! namespaces: packets of established connections vanish (no reset, as on a real network),
//! new connections fail, and the test process still reaches the cut-off node, as clients on
//! its side of the cut would. Everything is removed when the [`Net`] is dropped. Needs root
//! and `ip` (iproute2).

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One cluster's namespaces and bridge.
pub struct Net {
    tag: String,
    /// 10.a.b.0/24: node i is 10.a.b.(i + 1), the test process 10.a.b.254.
    prefix: [u8; 3],
    nodes: usize,
}

/// Runs `ip args`; the error names the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e} (install iproute2)", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {} (network namespaces need root)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// Creates `nodes` namespaces on a fresh bridge; names and subnet differ per test
    /// process and per cluster, so clusters of tests running at once do not meet.
    pub fn create(nodes: usize) -> Net {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let k = COUNT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let net = Net {
            tag: format!("lt{}{}", pid % 100_000, k % 10),
            prefix: [10, 100 + (pid % 100) as u8, (k % 250) as u8],
            nodes,
        };
        if let Err(e) = net.build() {
            drop(net);
            panic!("cannot set up network namespaces: {e}");
        }
        net
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }

    /// Node `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, i as u8 + 1)
    }

    fn build(&self) -> Result<(), String> {
        let [a, b, c] = self.prefix;
        let br = self.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{a}.{b}.{c}.254/24"), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..self.nodes {
            let ns = self.ns(i);
            let (inside, outside) = (format!("{}v{i}", self.tag), format!("{}p{i}", self.tag));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &inside, "type", "veth", "peer", "name", &outside,
            ])?;
            ip(&["link", "set", &outside, "master", &br])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            let cidr = format!("{}/24", self.addr(i));
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", &inside])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// A command that runs `program` in node `i`'s namespace (`ip netns exec` execs it,
    /// so the child's pid is the program's).
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(i)]).arg(program);
        cmd
    }

    /// Cuts node `i` off from every other node (`cut`), or heals that: blackhole routes
    /// to each peer in `i`'s namespace and to `i` in each peer's.
    pub fn cut(&self, i: usize, cut: bool) {
        let op = if cut { "add" } else { "del" };
        for j in (0..self.nodes).filter(|&j| j != i) {
            for (ns, to) in [(self.ns(i), self.addr(j)), (self.ns(j), self.addr(i))] {
                let dst = format!("{to}/32");
                if let Err(e) = ip(&["-n", &ns, "route", op, "blackhole", &dst]) {
                    panic!("partition of node {i}: {e}");
                }
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
