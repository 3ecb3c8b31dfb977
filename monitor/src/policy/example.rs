//! The commented example policy, as shipped in the repository's `policy.example.toml`.

/// A commented example policy (the repository's `policy.example.toml`). It parses.
pub const EXAMPLE_POLICY: &str = r#"# tcpstall policy: which wedged TCP connections to report, and which to reset.
# Check it with `tcpstall policy check FILE` before deploying it.

# How often the agent reads socket state.
tick = "1s"

# Thresholds for every socket. A socket that no rule below selects is
# classified with these and reported, but never reset.
[defaults]
zero_window_after = "30s"    # peer alive but not reading: zero window, nothing acked
no_ack_after = "30s"         # peer gone: data outstanding, no ACKs, retransmits rising
slow_drain_floor = "1KiB/s"  # send buffer full and the peer acks less than this...
slow_drain_window = "30s"    # ...measured over this window
recv_backlog_after = "30s"   # our own process is not reading what it received
cadence_factor = 2.0         # a socket that stalled and recovered before gets up to
ceiling = "5m"               # 2x its longest recovered stall, but never past 5m

[guards]
protect_ports = [22]         # never reset our SSH service, nor our SSH sessions out
max_resets_per_minute = 60   # per rule and minute (more for rules selecting many sockets)

# Granian serving WebSockets on :8000. A client that stops reading (killed tab,
# sleeping phone, half-open tunnel) fills the send buffer; the send parked on it
# holds the transport lock and freezes the worker until TCP gives up 15+ minutes
# later. Reset those connections after 20s instead.
[[rule]]
name = "granian-websocket"
local_ports = [8000]
# comm = ["granian"]         # narrow further by process name (as `ps -o comm` shows)
classes = ["zero_window", "no_ack"]
action = "reset"
zero_window_after = "20s"
cadence_factor = 3.0         # mobile clients stall and recover; allow for that...
ceiling = "2m"               # ...but not for long

# Server-sent events from the gateway service: clients disappear without a FIN,
# keepalive events pile up unacknowledged and connections stay ESTABLISHED.
[[rule]]
name = "sse-dead-clients"
local_ports = ["8443-8444"]
cgroup_prefix = ["/system.slice/mcp-gateway.service"]
classes = ["no_ack"]
action = "reset"
no_ack_after = "30s"

# Connections to the database network: never reset, but report wedges sooner.
[[rule]]
name = "postgres-watch"
remote_ports = [5432]
remote_cidrs = ["10.20.0.0/16", "fd00:20::/32"]
action = "observe"
no_ack_after = "10s"
zero_window_after = "10s"

# Everything else is observed with [defaults] and never reset.
"#;
