// SPDX-License-Identifier: MIT
// Where the daemon's log goes: stderr in the foreground, syslog once detached.
#pragma once

#include <spdlog/common.h>

namespace ivshmfs::fs {

void log_to_stderr(spdlog::level::level_enum level);
void log_to_syslog(spdlog::level::level_enum level);

}  // namespace ivshmfs::fs
