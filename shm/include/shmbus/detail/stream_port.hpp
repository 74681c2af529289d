// The user half of a stream: what a publisher and a subscriber process do with the connections of
// stream_layout.hpp. Each object is used by one thread at a time; nothing here allocates, throws or
// builds a string after attach (the vectors are reserved for the topic's geometry at attach).
//
// Publisher (StreamPublisher):
//  - keeps, for each connection to a subscriber, its own head, a cached copy of the subscriber's tail,
//    and how many chunk references are out on it; and for each chunk of its slot a reference count. All
//    process-local: only this publisher changes them, so fan-out needs no atomic read-modify-write.
//  - publish(): a message that fits (payload + attributes [+ timestamp] <= kStreamInlineRoom) is
//    written into every connection's next slot; a larger one is copied into a chunk once and the chunk
//    index written into every slot. When a connection is full: drop-oldest overwrites its oldest slot if
//    that slot is inline (S3), and otherwise drops the new message for that subscriber; block waits on
//    the slot's `space` EventCount until the deadline, then drops it for that subscriber. The
//    subscriber learns what it missed from the gap in sequence numbers.
//  - after writing every slot, one seq_cst fence (N2) and a look at each subscriber's wake word.
//  - chunks come back through completion rings; the publisher reads them when it needs a chunk and every
//    kDrainEvery publishes, recycles chunks whose count drops to zero into a local cache, and gives the
//    cache's excess back to the pool.
//  - when the topic's generation moves (G1') it re-reads its connection table; a connection that left it
//    is finished (every reference back) and marked `closed` for the broker; it then acks the generation.
//
// Subscriber (StreamSubscriber):
//  - polls its connections' next slots in turn (S1'); copies an inline message out (validated as a
//    seqlock under drop-oldest, S3'); takes a chunk message in place, recording the step (taking) and the
//    chunk (held bits) so that the broker can return it if this process is killed; advances its tail
//    (S2); under block, wakes a publisher that waits for room.
//  - gives a chunk back by pushing it on the connection's completion ring (C1), recording the step
//    (releasing) first; when the ring is full it keeps the chunk in a local list and retries later.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "shmbus/attributes.hpp"
#include "shmbus/detail/stream_layout.hpp"
#include "shmbus/topic.hpp"

namespace shmbus::detail {

// What the stream data path says, without building a string.
enum class SendStatus : std::uint8_t {
  ok,              // every subscriber got it
  no_subscribers,  // nobody subscribes now (the message is consumed: its sequence number is used)
  some_missed,     // some subscribers missed it (block: their rings stayed full until the deadline;
                   // drop-oldest: their oldest slot held a chunk)
  too_large,       // payload or attributes exceed the topic's limits; nothing was sent
  no_chunk,        // no chunk became free before the deadline; nothing was sent
  deleted,         // the topic was deleted or purged
  closed,          // the broker let this publisher's slot go (its process was taken for gone); attach anew
};

struct Received {
  // Where the message is.
  bool is_chunk = false;
  std::uint32_t chunk = 0;  // is_chunk
  std::uint32_t conn = 0;   // is_chunk: the connection to give it back on
  std::uint32_t size = 0;
  std::uint32_t attrs_size = 0;
  std::uint64_t seq = 0;
  std::uint64_t publisher = 0;
  std::uint64_t timestamp_ns = 0;
  std::uint64_t missed = 0;            // this publisher's messages missed just before this one
  std::byte bytes[kStreamInlineRoom];  // inline: payload, then attributes
};

class StreamPublisher {
 public:
  static constexpr std::uint32_t kDrainEvery = 64;

  // Attach to publisher slot `slot` (granted by the broker).
  static Result<std::unique_ptr<StreamPublisher>> attach(std::shared_ptr<TopicHandle> topic,
                                                         std::uint32_t slot, bool stamp);
  ~StreamPublisher();

  // Copy publish.
  SendStatus publish(const std::byte* data, std::size_t n, AttrList attrs, const Deadline& deadline) noexcept;
  // Zero copy: a chunk to write `payload(chunk)` into, waiting for one until the deadline.
  SendStatus loan(std::uint32_t& chunk, const Deadline& deadline) noexcept;
  // Publish a loaned chunk holding `n` payload bytes (given away in every case).
  SendStatus publish_chunk(std::uint32_t chunk, std::size_t n, AttrList attrs,
                           const Deadline& deadline) noexcept;
  // A loan not published.
  void unloan(std::uint32_t chunk) noexcept { recycle(chunk); }

  TopicHandle& topic() const { return *topic_; }
  std::uint32_t slot() const { return slot_; }
  std::uint64_t id() const { return id_; }
  std::uint64_t last_seq() const { return seq_; }
  bool closed() const { return closed_; }

 private:
  struct Conn {
    std::uint32_t k;
    std::uint32_t sub;
    ConnectionShared* c;
    std::uint64_t head;
    std::uint64_t cached_tail;
    std::uint64_t comp_tail;
    std::uint64_t outstanding;  // chunk references sent and not yet back
    EventCountShared* wake;     // the subscriber's wake word
  };
  StreamPublisher() = default;
  void refresh(std::uint64_t gen) noexcept;
  void drain(Conn& c) noexcept;
  void drain_all() noexcept;
  void recycle(std::uint32_t chunk) noexcept;
  bool take_chunk(std::uint32_t& chunk) noexcept;
  // Room in `c` for one more message; false when the message is dropped for it.
  bool room(Conn& c, bool chunk_message, const Deadline& deadline, bool* overwrite) noexcept;
  template <typename Write>
  SendStatus fan_out(bool chunk_message, std::uint32_t chunk, const Deadline& deadline,
                     Write&& write) noexcept;

  std::shared_ptr<TopicHandle> topic_;
  ChunkPool pool_;  // the topic's pool, stamping this slot's identity
  const StreamView* view_ = nullptr;
  PublisherSlot* ps_ = nullptr;
  std::uint32_t slot_ = 0;
  std::uint64_t id_ = 0;
  bool stamp_ = false;
  bool block_ = false;
  bool closed_ = false;  // our slot is no longer active: touch none of its chunks (the broker collects)
  std::uint64_t gen_ = ~0ULL;
  std::uint64_t seq_ = 0;
  std::uint64_t published_ = 0;
  std::uint32_t since_drain_ = 0;
  std::vector<Conn> conns_;    // active connections
  std::vector<Conn> closing_;  // connections that left the table, finishing
  std::vector<Conn> scratch_;
  std::vector<std::uint32_t> refs_;   // per chunk: references out
  std::vector<std::uint32_t> cache_;  // free chunks of this slot
  std::size_t cache_max_ = 0;
};

class StreamSubscriber {
 public:
  static Result<std::unique_ptr<StreamSubscriber>> attach(std::shared_ptr<TopicHandle> topic,
                                                          std::uint32_t slot);
  ~StreamSubscriber();

  // Take the next message of any connection (round robin). False when none is ready.
  bool try_receive(Received& out) noexcept;
  // Between these, inline messages move the connections' shared tails every depth / 4 messages and at
  // end_batch() (one store and one wake of a blocked publisher each); chunk messages still move it at once
  // (the broker's recovery reads it with the held bits).
  void begin_batch() noexcept { batching_ = true; }
  void end_batch() noexcept;
  // Give back a chunk message taken by try_receive().
  void release(std::uint32_t conn, std::uint32_t chunk) noexcept;
  EventCountShared* wake() const { return &ss_->ec; }
  TopicHandle& topic() const { return *topic_; }
  std::uint32_t slot() const { return slot_; }
  // The broker closed our slot (it took this process for gone): nothing more arrives; subscribe anew.
  bool closed() const { return closed_; }
  // Carry what we know of each publisher's sequence into `next` (a new slot of the same subscriber), so
  // that what was missed in between shows as missed; then acknowledge our slot's close (the broker then
  // finishes our old connections).
  void hand_over(StreamSubscriber& next) noexcept;

 private:
  struct Conn {
    std::uint32_t k;
    std::uint32_t pub;
    ConnectionShared* c;
    std::uint64_t tail;
    std::uint64_t shared_tail;  // what the connection's `tail` says (behind `tail` inside a batch)
    std::uint64_t comp_head;
    std::uint64_t cached_comp_tail;
    std::uint64_t last_seq;  // kNoSeq: none seen yet
    std::uint64_t pub_id;
    bool orphan;
    EventCountShared* space;  // the publisher's space EventCount
  };
  struct Pending {
    std::uint32_t k;
    std::uint32_t chunk;
  };
  // The last sequence number known of a publisher whose connection left our table.
  struct Known {
    std::uint64_t pub_id;
    std::uint64_t seq;
  };
  StreamSubscriber() = default;
  void refresh(std::uint64_t gen) noexcept;
  // What we know of `c`'s publisher's sequence: the last one received, else where it stood when it
  // connected; kNoSeq if neither.
  std::uint64_t known_seq(const Conn& c) const noexcept;
  std::uint64_t recall(std::uint64_t pub_id) const noexcept;
  void remember(std::uint64_t pub_id, std::uint64_t seq) noexcept;
  // A held chunk of a connection that is no longer ours to give back on.
  void let_go(std::uint32_t chunk) noexcept;
  bool push_completion(Conn& c, std::uint32_t chunk) noexcept;
  void publish_tail(Conn& c) noexcept;
  void retry_pending() noexcept;
  Conn* find(std::uint32_t k) noexcept;
  void set_held(std::uint32_t chunk, bool on) noexcept;

  std::shared_ptr<TopicHandle> topic_;
  const StreamView* view_ = nullptr;
  SubscriberSlot* ss_ = nullptr;
  std::atomic<std::uint64_t>* held_ = nullptr;
  std::uint32_t slot_ = 0;
  bool validate_ = false;  // drop-oldest: inline slots may be overwritten under us
  bool block_ = false;
  bool batching_ = false;         // inside begin_batch() / end_batch()
  std::uint64_t tail_batch_ = 1;  // in a batch, the tail goes out every depth / 4 inline messages
  bool closed_ = false;
  std::uint64_t gen_ = ~0ULL;
  std::uint64_t delivered_ = 0;
  std::size_t next_ = 0;  // round robin
  std::vector<Conn> conns_;
  std::vector<Conn> scratch_;
  std::vector<Pending> pending_;
  std::vector<Known> known_;
};

}  // namespace shmbus::detail
