# Sourced by scripts that run the service on loopback (deploy/quickstart.sh,
# tests/bench/oom_fallback.sh); defines nothing else.
#
# listening_port FILE: waits up to 10 s for a server started with --listen 127.0.0.1:0 (whose
# stdout goes to FILE) to print "listening on port N", then prints N (nothing if it did not).
listening_port() {
  for _ in $(seq 100); do
    grep -q 'listening on port' "$1" 2>/dev/null && break
    sleep 0.1
  done
  sed -n 's/.*listening on port \([0-9]*\).*/\1/p' "$1" 2>/dev/null
}

#
# start_coordinator BUILD_DIR OUT_DIR: starts mal-coordinator on a free loopback port with its
# state under OUT_DIR/coordinator (stdout in OUT_DIR/coordinator.out, log in
# OUT_DIR/coordinator.log), waits up to 10 s for it to listen, sets `coordinator` to its pid and
# exports MAL_ADDRESS (127.0.0.1:PORT) for malctl and mal-worker. Returns 1 with a message naming
# the log when it did not start. Stopping it is the caller's (kill "$coordinator").
start_coordinator() {
  local build_dir="$1" out="$2" port
  "$build_dir/server/mal-coordinator" --listen 127.0.0.1:0 --data-dir "$out/coordinator" \
    > "$out/coordinator.out" 2> "$out/coordinator.log" &
  coordinator=$!
  port=$(listening_port "$out/coordinator.out")
  [ -n "$port" ] || { echo "the coordinator did not start; see $out/coordinator.log" >&2; return 1; }
  export MAL_ADDRESS="127.0.0.1:$port"
}
