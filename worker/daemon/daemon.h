#ifndef MAL_WORKER_DAEMON_DAEMON_H_
#define MAL_WORKER_DAEMON_DAEMON_H_

// The worker daemon: registers with the coordinator, renews its lease by heartbeat, takes fold
// runs up to its slot count and runs each in a child process running the engine (so a crash or
// an out-of-memory of one run never takes the daemon down, and device memory is returned between
// runs), relays the child's events, uploads checkpoints and the final artifacts, and reports the
// outcome. When the coordinator goes away it keeps training, buffers events, reconnects with
// backoff and re-claims its runs. No torch here: the engine runs in the child.

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "worker/daemon/coordinator_client.h"

namespace mal::worker {

struct DaemonOptions {
  std::string coordinator;  // HOST:PORT
  int slots = 1;
  std::string work_dir;
  std::string name;                         // stable id; default <hostname>-<pid>
  std::vector<std::string> devices{"cpu"};  // slot i trains on devices[i % size]
  int threads = 0;                          // engine threads per run; 0: cores / slots
  // What each fold run executes, with `train -f SPEC --fold K --out DIR --events-fd 3 ...`: a
  // wrapper (nice, numactl, a container runner) or a test double; default this mal-worker binary.
  std::string engine;
  int upload_every_s = 15;  // checkpoint upload interval (also at every epoch end)
  int stop_grace_s = 10;    // SIGTERM -> SIGKILL for a child told to stop
  // A child that reports no progress for this long (s) is stuck, not slow: it gets SIGTERM (then
  // SIGKILL after stop_grace_s) and its run fails as retryable, naming the stall. Progress is any
  // event on the pipe: records, and the engine's EngineProgress while batches move (evaluation,
  // data generation). 0: never.
  int stall_timeout_s = 1800;
  // Where to serve grpc.health.v1 (SERVING while registered with the coordinator) and server
  // reflection, for probes; empty: not served. Port 0 picks one (logged).
  std::string listen;
  // TLS to the coordinator (CA, and a client certificate for mutual TLS) and the bearer token.
  std::string tls_ca, tls_cert, tls_key, token;
  // Normalised, link-resolved directories (common/spec/spec_paths.h NormalizeDataRoots) every
  // dataset and weight path of a run's spec must lie under; a run outside fails without retry
  // before anything is opened. Empty: no containment.
  std::vector<std::string> data_roots;
  // How many failed runs' directories stay for inspection (marked .failed, the newest kept); an
  // older one is removed when a run fails and at a start. Their logs are on the coordinator
  // (`malctl logs`); the directory adds the checkpoint and output (about 260 MB for ResNet-34).
  int keep_failed_runs = 10;
};

// Runs until `*stop` becomes true; then stops its children (checkpointing), hands their runs
// back, and returns 0. Returns 2 for bad options, a work directory another daemon holds, or a
// health address it cannot listen on. `client`: the coordinator to talk to (unit tests pass a
// fake); null: a gRPC client for options.coordinator with the TLS and token options.
//
// A run's outcome comes from its engine child as a typed last event (RunOutcome, event_pipe.h):
// code 0 completes it with the last epoch's metrics; an error fails it, retried elsewhere only if
// the engine says so; a child that ends without one crashed and the run is retried (its message
// says how the process ended and the log's last line); a child killed as stuck
// (stall_timeout_s) is retried with a message naming the stall and the last iteration.
int RunDaemon(const DaemonOptions& options, const std::atomic<bool>* stop,
              std::unique_ptr<CoordinatorClient> client = nullptr);

}  // namespace mal::worker

#endif  // MAL_WORKER_DAEMON_DAEMON_H_
