// SPDX-License-Identifier: MIT
// ivshm-server: hands out peer ids, the shared memory and eventfds to
// ivshmem-doorbell devices and host programs (docs/server.md).
#include <cstdio>
#include <exception>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "options.hpp"
#include "server.hpp"

int main(int argc, char** argv) {
  using namespace ivshmfs::server;
  ParsedCommandLine cmd;
  try {
    cmd = parse_command_line(argc, argv);
    if (cmd.action == Action::help) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (cmd.action == Action::version) {
      std::printf("ivshm-server %s\n", IVSHMFS_VERSION);
      return 0;
    }
    check_shm_file(cmd.options.shm_path);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "ivshm-server: %s\nTry 'ivshm-server --help'.\n", e.what());
    return 2;
  }
  // Plain stderr (journald adds the time stamps under systemd).
  auto logger = spdlog::stderr_logger_st("ivshm-server");
  logger->set_pattern("ivshm-server[%P]: %l: %v");
  logger->set_level(cmd.options.log_level);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(logger);
  try {
    Server server(cmd.options);
    return server.run();
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
}
