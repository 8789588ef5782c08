// SPDX-License-Identifier: MIT
#include "change_source.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "doorbell_source.hpp"
#include "futex_source.hpp"
#include "ivshmfs/wake.hpp"
#include "polling_source.hpp"

namespace ivshmfs::fs {

std::unique_ptr<ChangeSource> make_change_source(const std::shared_ptr<Region>& region, std::optional<uint32_t> own_id,
                                                 const Options& options, std::unique_ptr<ServerClient> server) {
  if (server && own_id) {
    std::string peers;
    for (uint32_t id : server->peers()) peers += (peers.empty() ? "" : ", ") + std::to_string(id);
    spdlog::info(
        "wake-ups: eventfds of ivshm-server {} (id {}; peers now: {}); owners that are not its clients polled every "
        "{} us to {} ms while waited for; a fallback look every {} s",
        server->path(), server->id(), peers.empty() ? "none" : peers, options.poll.min.count(),
        options.poll.max.count() / 1000, DoorbellSource::kFallback.count() / 1000);
    return std::make_unique<DoorbellSource>(region, *own_id, std::make_unique<EventfdDoorbell>(std::move(server)),
                                            options.poll);
  }
  // The doorbell is the own partition's device (in a split region, its piece's).
  const PartitionInfo* own = own_id ? region->find(*own_id) : nullptr;
  const Backend& backend = own != nullptr ? region->backend(*own) : *region->backends().front();
  const auto& device = backend.device_info();
  const char* why = nullptr;
  if (!device || !device->has_msix) {
    why = "no ivshmem-doorbell device";
  } else if (!device->doorbell) {
    why = "the driver set up no doorbell interrupts";
  } else if (!options.doorbell) {
    why = "-o nodoorbell";
  } else if (!own_id) {
    why = "a read-only peer cannot announce what it waits for";
  } else if (*own_id != device->ivposition) {
    why = "the partition id differs from the IVPosition, so peers would ring another VM";
  }
  if (why == nullptr) {
    auto fd = backend.open_doorbell(0);
    if (fd) {
      spdlog::info("wake-ups: doorbells (MSI-X vector 0 of IVPosition {}); no polling, a fallback look every {} s",
                   device->ivposition, DoorbellSource::kFallback.count() / 1000);
      return std::make_unique<DoorbellSource>(region, *own_id, std::make_unique<DeviceDoorbell>(region, *own_id, *fd),
                                              options.poll);
    }
    spdlog::warn("doorbells: {}", fd.error().message);
    why = "the doorbell could not be opened";
  }
  if (device) {
    // A guest: its peers run under other kernels; no futex reaches them.
  } else if (!options.futex) {
    why = "-o nofutex";
  } else if (!own_id) {
    why = "a read-only peer cannot announce what it waits for";
  } else if (!std::ranges::all_of(region->backends(), [](const Backend* b) { return futex_wakes_possible(*b); })) {
    why = "a backend is not a host file";
  } else if (!futex_waitv_available()) {
    why = "this kernel has no futex_waitv (Linux 5.16 or later)";
  } else {
    spdlog::info(
        "wake-ups: futex on peers' control blocks (owners on this host wake us); partitions of other systems "
        "polled every {} us to {} ms; a fallback look every {} s",
        options.poll.min.count(), options.poll.max.count() / 1000, FutexSource::kFallback.count() / 1000);
    return std::make_unique<FutexSource>(region, *own_id, options.poll);
  }
  spdlog::info("wake-ups: polling peers' control blocks every {} us to {} ms ({})", options.poll.min.count(),
               options.poll.max.count() / 1000, why);
  return std::make_unique<PollingSource>(options.poll);
}

}  // namespace ivshmfs::fs
