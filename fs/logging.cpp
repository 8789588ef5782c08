// SPDX-License-Identifier: MIT
#include "logging.hpp"

#include <syslog.h>

#include <memory>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>

namespace ivshmfs::fs {

void log_to_stderr(spdlog::level::level_enum level) {
  auto logger = spdlog::stderr_color_mt("ivshmfs");
  logger->set_pattern("ivshmfs[%P]: %^%l%$: %v");
  logger->set_level(level);
  spdlog::set_default_logger(std::move(logger));
}

void log_to_syslog(spdlog::level::level_enum level) {
  // The logger of the foreground phase is replaced: drop() first so the name can be reused.
  spdlog::drop("ivshmfs");
  auto sink = std::make_shared<spdlog::sinks::syslog_sink_mt>("ivshmfs", LOG_PID, LOG_DAEMON, true);
  auto logger = std::make_shared<spdlog::logger>("ivshmfs", std::move(sink));
  logger->set_pattern("%v");
  logger->set_level(level);
  spdlog::set_default_logger(std::move(logger));
}

}  // namespace ivshmfs::fs
