#include "common/util/systemd_notify.h"

#include <systemd/sd-daemon.h>

namespace mal {

bool NotifySystemd(const std::string& state) { return sd_notify(0, state.c_str()) > 0; }

}  // namespace mal
