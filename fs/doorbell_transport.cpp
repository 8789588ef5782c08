// SPDX-License-Identifier: MIT
#include "doorbell_transport.hpp"

#include <unistd.h>

#include <spdlog/fmt/fmt.h>
#include <spdlog/spdlog.h>

namespace ivshmfs::fs {

namespace {
constexpr uint16_t kVector = 0;  // "a partition changed"

void read_counter(int fd) noexcept {
  uint64_t counter = 0;
  if (::read(fd, &counter, sizeof counter) < 0) {
    // EAGAIN: read by a racing wake-up already.
  }
}
}  // namespace

DeviceDoorbell::DeviceDoorbell(std::shared_ptr<Region> region, uint32_t own_id, int doorbell_fd) noexcept
    : region_(std::move(region)), own_id_(own_id), doorbell_fd_(doorbell_fd) {}

DeviceDoorbell::~DeviceDoorbell() { ::close(doorbell_fd_); }

void DeviceDoorbell::drain() noexcept { read_counter(doorbell_fd_); }

bool DeviceDoorbell::ring(uint32_t peer) noexcept {
  // Rung through the own partition's device (its piece's in a split region).
  if (auto r = region_->backend(*region_->find(own_id_)).ring(static_cast<uint16_t>(peer), kVector); !r) {
    spdlog::warn("doorbells: {}", r.error().message);
    return false;
  }
  return true;
}

void EventfdDoorbell::drain() noexcept { read_counter(client_->own_vector0()); }

std::string EventfdDoorbell::status() const {
  std::string peers;
  for (uint32_t id : client_->peers()) peers += (peers.empty() ? "" : ",") + std::to_string(id);
  return fmt::format(" transport=eventfd server={} id={} peers={} joins={} leaves={}",
                     client_->connected() ? "connected" : "lost", client_->id(), peers.empty() ? "none" : peers,
                     client_->joins(), client_->leaves());
}

}  // namespace ivshmfs::fs
