# Helpers shared by the benchmark scripts in this directory. Sourced, not run.
# Everything listens on and dials 127.0.0.1 only.

# A port on 127.0.0.1 free for both TCP and UDP right now (as `fifty::local::free_port` picks).
free_port() {
    python3 - <<'EOF'
import socket, sys
for _ in range(50):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    port = u.getsockname()[1]
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        t.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        t.close()
        u.close()
    print(port)
    sys.exit(0)
sys.exit("found no free loopback port")
EOF
}

# wait_until DESCRIPTION TIMEOUT_SECONDS COMMAND...: polls COMMAND every 100 ms until it succeeds;
# fails (returns 1) with a message once TIMEOUT_SECONDS have passed.
wait_until() {
    local what=$1 timeout=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            echo "timed out after ${timeout}s waiting for $what" >&2
            return 1
        fi
        sleep 0.1
    done
}

# CPU ticks (utime + stime) of a process, from /proc/PID/stat (fields 14 and 15; the command name
# in field 2 may hold spaces, so count from after its closing parenthesis).
proc_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
}

# A field of /proc/PID/status in KiB, e.g. `proc_kib PID VmRSS`.
proc_kib() {
    awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"
}

# The machine's CPU ticks from /proc/stat: "busy steal total" (steal: time the hypervisor ran
# something else while this machine wanted the CPU).
cpu_ticks() {
    awk '$1 == "cpu" { total = 0; for (i = 2; i <= 9; i++) total += $i; print total - $5 - $6 - $9, $9, total }' /proc/stat
}

# cpu_share BEFORE AFTER: "busy X%, stolen Y%" of all cores between two `cpu_ticks` readings.
cpu_share() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        split(a, x, " "); split(b, y, " "); t = y[3] - x[3]; if (t <= 0) t = 1
        printf "busy %.0f%%, stolen by the hypervisor %.0f%%", (y[1] - x[1]) / t * 100, (y[2] - x[2]) / t * 100
    }'
}

# Wall clock, seconds with nanoseconds.
now() {
    date +%s.%N
}

# Prints the machine the figures come from.
machine_info() {
    echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), kernel $(uname -r)"
    free -h | sed 's/^/  /'
    echo "date: $(date -u)"
    echo "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# start_coordinator DIR: starts `fifty server` with its data in DIR on free loopback ports, waits
# until its API answers, and sets COORD_PID, COORD_HTTP, COORD_QUIC and exports FIFTY_ADDR,
# FIFTY_CACERT and FIFTY_TOKEN for the CLI. The caller's trap must kill COORD_PID.
start_coordinator() {
    local dir=$1
    mkdir -p "$dir"
    COORD_HTTP=$(free_port)
    COORD_QUIC=$(free_port)
    while [[ $COORD_QUIC == "$COORD_HTTP" ]]; do COORD_QUIC=$(free_port); done
    cat >"$dir/coordinator.toml" <<EOF
data_dir = "$dir/coordinator"
http_addr = "127.0.0.1:$COORD_HTTP"
quic_addr = "127.0.0.1:$COORD_QUIC"
heartbeat_interval = "1s"
down_after = "5s"
bootstrap_token_file = "$dir/bootstrap-token"
EOF
    "$BIN/fifty" server --config "$dir/coordinator.toml" </dev/null >"$dir/coordinator.log" 2>&1 &
    COORD_PID=$!
    wait_until "the bootstrap token" 60 test -s "$dir/bootstrap-token"
    wait_until "the cluster CA" 60 grep -q "END CERTIFICATE" "$dir/coordinator/tls/ca.pem"
    export FIFTY_ADDR="https://127.0.0.1:$COORD_HTTP"
    export FIFTY_CACERT="$dir/coordinator/tls/ca.pem"
    FIFTY_TOKEN=$(tr -d '[:space:]' <"$dir/bootstrap-token")
    export FIFTY_TOKEN
    wait_until "the coordinator's API" 60 "$BIN/fifty" status --json
}

# stop_pid PID: SIGTERM, then SIGKILL if it is still there after 10 s; waits for it.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
