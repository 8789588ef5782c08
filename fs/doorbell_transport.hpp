// SPDX-License-Identifier: MIT
// How a DoorbellSource rings peers and is rung: the transport under its
// protocol (announce, coalesce, fallback; doorbell_source.hpp).
//  - DeviceDoorbell: in a guest, the ivshm driver's /dev/ivshmN on an
//    ivshmem-doorbell device (poll for MSI-X vector 0, IVSHM_IOC_RING).
//  - EventfdDoorbell: on the host, a client of ivshm-server (-o server=):
//    ringing peer j writes 1 to j's vector-0 eventfd, being rung makes the
//    own vector-0 eventfd readable. Guests' QEMUs turn those writes into
//    MSI-X interrupts and back, so host and guests ring each other.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "ivshmfs/region.hpp"
#include "server_client.hpp"

namespace ivshmfs::fs {

class DoorbellTransport {
 public:
  DoorbellTransport() = default;
  DoorbellTransport(const DoorbellTransport&) = delete;
  DoorbellTransport& operator=(const DoorbellTransport&) = delete;
  virtual ~DoorbellTransport() = default;

  // Polls readable when a peer rang our vector 0 since the last drain().
  [[nodiscard]] virtual int wait_fd() const noexcept = 0;
  virtual void drain() noexcept = 0;
  // One more descriptor for the source's thread to poll (-1: none), and
  // what to do when it is readable (e.g. the server's notices).
  [[nodiscard]] virtual int service_fd() const noexcept { return -1; }
  virtual void service() noexcept {}
  // Rings vector 0 of the peer whose partition id is `peer`; false when
  // nothing was rung. Any thread.
  virtual bool ring(uint32_t peer) noexcept = 0;
  // Whether a commit of partition `peer`'s owner rings us. False for an
  // owner the transport knows cannot (on the host: not a client of the
  // server, or the server went away): the source polls those partitions.
  [[nodiscard]] virtual bool rung_by(uint32_t peer) const noexcept = 0;
  // .status fields, " transport=NAME ..." (leading blank, no newline).
  [[nodiscard]] virtual std::string status() const = 0;
};

class DeviceDoorbell final : public DoorbellTransport {
 public:
  // `doorbell_fd` from Backend::open_doorbell(0) of the own partition's
  // device; owned.
  DeviceDoorbell(std::shared_ptr<Region> region, uint32_t own_id, int doorbell_fd) noexcept;
  ~DeviceDoorbell() override;
  [[nodiscard]] int wait_fd() const noexcept override { return doorbell_fd_; }
  void drain() noexcept override;
  bool ring(uint32_t peer) noexcept override;
  // A guest cannot tell which peers ring: every one is assumed to (a peer
  // that polls is seen at the fallback look).
  [[nodiscard]] bool rung_by(uint32_t /*peer*/) const noexcept override { return true; }
  [[nodiscard]] std::string status() const override { return " transport=device"; }

 private:
  std::shared_ptr<Region> region_;
  uint32_t own_id_;
  int doorbell_fd_;
};

class EventfdDoorbell final : public DoorbellTransport {
 public:
  explicit EventfdDoorbell(std::unique_ptr<ServerClient> client) noexcept : client_(std::move(client)) {}
  [[nodiscard]] int wait_fd() const noexcept override { return client_->own_vector0(); }
  void drain() noexcept override;
  [[nodiscard]] int service_fd() const noexcept override { return client_->socket(); }
  void service() noexcept override { client_->service(); }
  bool ring(uint32_t peer) noexcept override { return client_->ring(peer); }
  // Peers that are clients of the server ring us while it is there. Once it
  // is gone a peer may leave and another take its id unseen: poll.
  [[nodiscard]] bool rung_by(uint32_t peer) const noexcept override {
    return client_->connected() && client_->has_peer(peer);
  }
  [[nodiscard]] std::string status() const override;

 private:
  std::unique_ptr<ServerClient> client_;
};

}  // namespace ivshmfs::fs
