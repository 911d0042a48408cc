#ifndef MAL_COMMON_UTIL_SYSTEMD_NOTIFY_H_
#define MAL_COMMON_UTIL_SYSTEMD_NOTIFY_H_

// systemd's readiness protocol (sd_notify(3), libsystemd) for the daemons' Type=notify units:
// READY=1 once serving (the coordinator and mal-serve: listening; a worker: registered with the
// coordinator), STOPPING=1 when a graceful stop begins, STATUS=... for `systemctl status`.
// Without $NOTIFY_SOCKET (not started by systemd) nothing is sent.

#include <string>

namespace mal {

// Sends `state` ("READY=1\nSTATUS=listening on port 7070"); returns false when nothing was sent
// (no $NOTIFY_SOCKET, or the socket refused it; never an error for the caller).
bool NotifySystemd(const std::string& state);

}  // namespace mal

#endif  // MAL_COMMON_UTIL_SYSTEMD_NOTIFY_H_
