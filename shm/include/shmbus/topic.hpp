// Topic segments: one per topic, created by the broker, mapped by every port of the topic.
//
// A topic segment holds a TopicShared header, a ChunkPool whose chunks carry one message each (a 64-byte
// MessageHeader, up to `attrs_max` bytes of attributes, then up to `max_size` payload bytes), the waiter
// records of its topic-wide EventCounts, and for a stream its publisher slots, subscriber slots and
// connections (stream_layout.hpp). Every chunk is always in exactly one place (see chunk_pool.hpp), so
// whatever a killed process held is returned by the broker's reclaim.
//
//  - kind queue: one message ring (pool ring 1) shared by all consumers. A producer allocates a chunk,
//    writes it and pushes it; a consumer pops it (each message reaches one consumer), and acks
//    (release) or nacks (push back, flagged redelivered). A consumer that dies before acking has its
//    chunks pushed back by reclaim(redeliver). The ring has a cell for every chunk of the pool, so a
//    message that goes back (a nack, a redelivery) always finds room and never waits for a consumer;
//    `depth` bounds new messages only: a producer waits while the ring holds depth messages or more.
//  - kind stream: a connection per (publisher, subscriber) pair, each an SPSC submission ring and an
//    SPSC completion ring (stream_layout.hpp); the user half is stream_port.hpp, the broker's half
//    stream_supervisor.hpp. The chunk pool only lends chunks to publishers (ring 0).
//
// Waiting: a process that waits on a topic-wide EventCount (not_empty, space) is counted in its own
// WaiterRecord only (eventcount.hpp, "Dead waiters"), claimed by CAS on first wait and freed by the
// broker when the process is dead, so a waiter killed while parked leaves no count behind. A process
// that finds every record taken waits without being counted, by sleeping 1 ms between checks.
//
// Shared memory is data: geometry is read once at open, checked against the mapping, and kept in
// process-local fields (this class, StreamView); the data path never re-reads it from the segment.
//
// Memory ordering: message bytes in chunks are published by the pool's hand-over (R5/R3 -> A3/A5, see
// chunk_pool.hpp) for queues and by the connection rings (S1, stream_layout.hpp) for streams. Counters
// are relaxed: statistics only.
#pragma once

#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shmbus/attributes.hpp"
#include "shmbus/chunk_pool.hpp"
#include "shmbus/config.hpp"
#include "shmbus/detail/directory.hpp"
#include "shmbus/detail/stream_layout.hpp"
#include "shmbus/detail/topic_layout.hpp"
#include "shmbus/eventcount.hpp"
#include "shmbus/options.hpp"
#include "shmbus/result.hpp"
#include "shmbus/segment.hpp"

namespace shmbus {

// A deadline that reads the clock only when first needed: the data path passes one down and the fast
// path (room in the ring, a free chunk) never asks for it (a clock read is ~25 ns here, a third of a
// message's cost). Implicit from a time_point for callers that have one.
class Deadline {
 public:
  Deadline(std::chrono::steady_clock::time_point at) : at_(at), known_(true) {}  // NOLINT: implicit
  static Deadline after(std::chrono::nanoseconds timeout) {
    Deadline d;
    d.timeout_ = timeout > std::chrono::hours(24 * 365) ? std::chrono::hours(24 * 365) : timeout;
    return d;
  }
  static Deadline now() { return after(std::chrono::nanoseconds::zero()); }
  std::chrono::steady_clock::time_point at() const {
    if (!known_) {
      at_ = std::chrono::steady_clock::now() + timeout_;
      known_ = true;
    }
    return at_;
  }
  std::chrono::nanoseconds left() const { return at() - std::chrono::steady_clock::now(); }
  bool zero() const { return !known_ && timeout_.count() == 0; }

 private:
  Deadline() = default;
  std::chrono::nanoseconds timeout_{0};
  mutable std::chrono::steady_clock::time_point at_{};
  mutable bool known_ = false;
};

// Sleep min(1 ms, left): the wait of a process that has no waiter record.
void poll_pause(std::chrono::nanoseconds left) noexcept;

// A stream's shared parts as this process validated them at open (never re-read from the segment).
struct StreamView {
  detail::PublisherSlot* pubs = nullptr;
  SubscriberSlot* subs = nullptr;
  std::byte* conns = nullptr;
  std::atomic<std::uint32_t>* pub_conn = nullptr;  // [max_publishers][max_subscribers]
  std::atomic<std::uint32_t>* sub_conn = nullptr;  // [max_subscribers][max_publishers]
  std::atomic<std::uint64_t>* held = nullptr;      // [max_subscribers][2][held_words]
  std::atomic<std::uint64_t>* generation = nullptr;
  std::uint32_t max_publishers = 0;
  std::uint32_t max_subscribers = 0;
  std::uint32_t conn_capacity = 0;
  std::uint64_t depth = 0;  // submission slots per connection, a power of two
  std::uint64_t comp_depth = 0;
  std::uint64_t conn_stride = 0;
  std::uint64_t held_words = 0;

  detail::ConnectionShared* conn(std::uint32_t k) const {
    return reinterpret_cast<detail::ConnectionShared*>(conns + std::uint64_t{k} * conn_stride);
  }
  std::byte* slot(std::uint32_t k, std::uint64_t pos) const {
    return reinterpret_cast<std::byte*>(conn(k)) + sizeof(detail::ConnectionShared) +
           (pos & (depth - 1)) * detail::kStreamSlotStride;
  }
  std::atomic<std::uint64_t>& comp_cell(std::uint32_t k, std::uint64_t pos) const {
    auto* cells = reinterpret_cast<std::atomic<std::uint64_t>*>(reinterpret_cast<std::byte*>(conn(k)) +
                                                                sizeof(detail::ConnectionShared) +
                                                                depth * detail::kStreamSlotStride);
    return cells[pos & (comp_depth - 1)];
  }
  std::atomic<std::uint32_t>& pub_conn_at(std::uint32_t pub, std::uint32_t sub) const {
    return pub_conn[std::uint64_t{pub} * max_subscribers + sub];
  }
  std::atomic<std::uint32_t>& sub_conn_at(std::uint32_t sub, std::uint32_t pub) const {
    return sub_conn[std::uint64_t{sub} * max_publishers + pub];
  }
  // Per subscriber slot, two bitmaps of held_words words: the chunks it holds, then (rel_of) the held
  // chunks it let go of after the broker closed its slot while it lived (see stream_layout.hpp).
  std::atomic<std::uint64_t>* held_of(std::uint32_t sub) const {
    return held + std::uint64_t{sub} * 2 * held_words;
  }
  std::atomic<std::uint64_t>* rel_of(std::uint32_t sub) const { return held_of(sub) + held_words; }
};

class TopicHandle {
 public:
  static constexpr std::uint32_t kQueueRing = 1;  // a queue's message ring in its pool (0: the free ring)

  // Broker: create and publish the segment of a new topic.
  static Result<TopicHandle> create(std::string_view domain, std::uint64_t id, std::string_view name,
                                    const TopicOptions& options);
  // Anyone: open and validate an existing topic segment.
  static Result<TopicHandle> open(std::string_view domain, std::uint64_t id);
  static Status remove(std::string_view domain, std::uint64_t id);

  TopicHandle() = default;
  TopicHandle(TopicHandle&& other) noexcept { *this = std::move(other); }
  TopicHandle& operator=(TopicHandle&& other) noexcept;

  // The OwnerId this handle stamps (chunks, waiter records); see ChunkPool::set_identity().
  void set_identity(OwnerId id) noexcept { pool_.set_identity(id); }
  OwnerId identity() const noexcept { return pool_.identity(); }

  TopicShared* shared() const { return t_; }
  ChunkPool& pool() { return pool_; }
  const ChunkPool& pool() const { return pool_; }
  const Segment& segment() const { return seg_; }
  TopicKind kind() const { return kind_; }
  Overflow overflow() const { return overflow_; }
  std::string name() const { return name_; }
  std::size_t max_size() const { return max_size_; }
  std::uint32_t attrs_max() const { return attrs_max_; }
  std::uint64_t depth() const { return depth_; }
  const StreamView& stream() const { return stream_; }
  SubscriberSlot* slot(std::uint32_t i) const { return stream_.subs + i; }
  std::uint32_t max_subscribers() const { return stream_.max_subscribers; }
  std::uint32_t max_publishers() const { return stream_.max_publishers; }
  // Slots in the active state now (a diagnostic for tests and stats; 0 for a queue).
  std::uint32_t active_subscribers() const noexcept {
    std::uint32_t n = 0;
    for (std::uint32_t i = 0; i < stream_.max_subscribers; ++i)
      n += stream_.subs[i].state.load(std::memory_order_acquire) == kSlotActive ? 1 : 0;
    return n;
  }
  std::uint32_t active_publishers() const noexcept {
    std::uint32_t n = 0;
    for (std::uint32_t i = 0; i < stream_.max_publishers; ++i)
      n += stream_.pubs[i].state.load(std::memory_order_acquire) == detail::kPubActive ? 1 : 0;
    return n;
  }

  // Message layout inside a chunk (attrs_max_ and max_size_ are process-local, checked at open).
  MessageHeader* header(std::uint32_t chunk) const {
    return reinterpret_cast<MessageHeader*>(pool_.data(chunk));
  }
  std::byte* attrs(std::uint32_t chunk) const { return pool_.data(chunk) + sizeof(MessageHeader); }
  std::byte* payload(std::uint32_t chunk) const {
    return pool_.data(chunk) + sizeof(MessageHeader) + attrs_max_;
  }

  // Mark the topic deleted (before its segment is unlinked), so that ports fail rather than publish into
  // a segment nobody will read again.
  void mark_deleted() noexcept { t_->deleted.store(1, std::memory_order_release); }
  bool deleted() const noexcept { return t_->deleted.load(std::memory_order_acquire) != 0; }

  // ---- waiting on the topic-wide EventCounts ----
  // Wait until ready() (which may take something: a chunk, a message), spinning `spin` times first,
  // then parking on the topic's not_empty or space counted in this process's waiter record. False when
  // the deadline passed first (ready() is tried once more at the end).
  enum class WaitOn : std::uint8_t { not_empty, space };
  template <typename Ready>
  bool wait_for(WaitOn on, Ready&& ready, const Deadline& deadline, std::uint32_t spin = 0) noexcept;
  // This process's waiter record (claimed on first use), or null when every record is taken.
  WaiterRecord* my_record() noexcept;
  // Wake whoever waits on not_empty or space (no syscall when nobody does).
  void notify(WaitOn on) const noexcept {
    EventCount(on == WaitOn::not_empty ? &t_->not_empty : &t_->space, &waiters_,
               on == WaitOn::not_empty ? kLaneNotEmpty : kLaneSpace)
        .notify();
  }

  // ---- queue data path (clients) ----
  enum class IoStatus : std::uint8_t { ok, no_chunk, timed_out };
  // Queue: push a new message (the caller counts `published`). While the queue holds `depth` messages or
  // more, wait for space until `deadline` (then timed_out; the chunk is still held).
  IoStatus push_queue(std::uint32_t chunk, const Deadline& deadline) noexcept;
  // Queue: put back a message taken from it (a nack, a redelivery). Never waits: the ring has a cell for
  // every chunk. timed_out only if the ring is damaged (the chunk is then still held).
  IoStatus requeue(std::uint32_t chunk) noexcept;
  // Allocate a chunk, waiting for one until `deadline` (back-pressure).
  IoStatus allocate(std::uint32_t& chunk, const Deadline& deadline) noexcept;
  // Give back a chunk (a released sample, an acked delivery) and wake a blocked allocator if any.
  void release(std::uint32_t chunk) noexcept;

  // ---- broker ----
  // Broker, at adoption: release the waiter mark's lock if a broker died holding it, lower the mark past
  // free records (eventcount.hpp, "The mark"), and wake every waiter once: a process that died while no
  // broker ran, between a change and its notify, is named nowhere the new broker looks.
  void repair_waiters() noexcept {
    waiters_.clear_lock();
    (void)waiters_.lower();
    notify(WaitOn::not_empty);
    notify(WaitOn::space);
  }
  // Retry held redeliveries (queue); returns how many went back to the queue.
  std::uint64_t retry_held();
  // Reclaim what the process `dead` held: its waiter records; a queue's chunks (redelivered) and a
  // stream's process-owned chunks (freed). A stream's slots and slot-owned chunks are the stream
  // supervisor's (stream_supervisor.hpp).
  ReclaimReport reclaim(OwnerId dead);
  // Owners named in chunk owner words, waiter records, and a stream's slots that are provably dead
  // (liveness() == dead). Those whose liveness cannot be told are added to *unknown, never reclaimed.
  std::vector<OwnerId> dead_owners(std::vector<OwnerId>* unknown = nullptr) const;
  // Chunks the broker took for redelivery and could not push yet (retried every sweep).
  std::size_t held() const { return held_.size(); }
  std::uint64_t queued_messages() const;  // messages waiting in the rings now

 private:
  friend class StreamSupervisor;
  std::vector<std::uint32_t> held_;  // broker: redeliveries that met a full ring, retried by the sweep
  Segment seg_;
  TopicShared* t_ = nullptr;
  WaiterTable waiters_;  // geometry validated at open
  StreamView stream_;
  TopicKind kind_ = TopicKind::stream;
  Overflow overflow_ = Overflow::drop_oldest;
  std::uint64_t depth_ = 0;
  std::uint64_t cached_head_ = 0;  // queue: the ring's head as this process last read it (push_queue)
  std::uint64_t max_size_ = 0;
  std::uint32_t attrs_max_ = 0;
  std::string name_;
  // This process's waiter record: -1 until a wait claims one (a failed claim is retried at each wait).
  // Atomic: the threads of a process share a handle.
  std::atomic<std::int32_t> record_{-1};
  ChunkPool pool_;
};

template <typename Ready>
bool TopicHandle::wait_for(WaitOn on, Ready&& ready, const Deadline& deadline, std::uint32_t spin) noexcept {
  if (ready()) return true;           // before any clock read
  if (deadline.zero()) return false;  // a try: no spinning, no waiter record
  // Spin, yielding the CPU now and then (with more processes than CPUs the one that would make us ready
  // may be waiting for ours), and no longer than the deadline: 2000 pauses are ~100 us here.
  if (spin != 0) (void)deadline.at();  // fix the deadline now, not after the spin
  for (std::uint32_t i = 0; i < spin; ++i) {
    if (ready()) return true;
    if (i % 64 == 63) {
      if (deadline.left() <= std::chrono::nanoseconds::zero()) return ready();
      sched_yield();
    } else {
      __builtin_ia32_pause();
    }
  }
  WaiterRecord* mine = my_record();
  if (mine == nullptr) {  // no waiter record: poll, uncounted, so that dying here leaks nothing
    for (;;) {
      if (ready()) return true;
      const auto left = deadline.left();
      if (left <= std::chrono::nanoseconds::zero()) return ready();
      poll_pause(left);
    }
  }
  EventCount ec(on == WaitOn::not_empty ? &t_->not_empty : &t_->space, &waiters_,
                on == WaitOn::not_empty ? kLaneNotEmpty : kLaneSpace, mine);
  for (;;) {
    const std::uint32_t key = ec.prepare_wait();  // W1, W2
    if (ready()) {                                // W3
      ec.cancel_wait();
      return true;
    }
    const auto left = deadline.left();
    if (left <= std::chrono::nanoseconds::zero()) {
      ec.cancel_wait();
      return ready();
    }
    ec.wait(key, left);  // W4
  }
}

}  // namespace shmbus
