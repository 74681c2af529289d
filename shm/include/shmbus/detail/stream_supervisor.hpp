// The supervisor half of a stream: what the broker does with the slots and connections of
// stream_layout.hpp. Only the broker runs this code; it is the only writer of slot states, connection
// states and the connection tables, and it bumps the topic's generation (G1) after every change.
//
// Life of a connection k = (publisher slot i, subscriber slot j):
//   free --alloc--> active --subscriber leaves or dies--> closing --publisher acked, every ref back--> free
//                      \--publisher leaves or dies--> orphan --subscriber drained it, acked--> free
// - alloc: positions restart at `depth` (slots hold seq = their index, "empty"), state last.
// - closing: removed from both tables. Once the publisher's seen_generation shows it stopped writing to k,
//   the broker gives back, on k's completion ring and as the gone subscriber would have, every chunk the
//   subscriber did not return: the unread chunk entries and the chunks its held bits name (finishing a
//   step it was killed in). A subscriber that lives on (the broker closed its slot without being asked)
//   first acks the change; then its held chunks come back one by one as it lets go of them (released
//   bits), and its slot stays closing until it holds nothing. The publisher drains them, then sets `closed`.
//   The subscriber slot is free again once none of its connections is left.
// - orphan: removed from the publisher's table; the subscriber keeps reading what was published, then
//   the broker removes k from its table and frees k once the subscriber acked that generation. The
//   retired publisher slot's chunks are freed one by one as soon as nothing refers to them (no unread
//   entry in a connection, no held bit of a live subscriber); the slot is free again when none is left.
// Every step reads only shared state, so a broker killed anywhere leaves work the next one redoes
// without doing anything twice (the steps are idempotent); adopt() also rebuilds the tables from the
// connection states, which a broker killed between the two may have left apart.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "shmbus/result.hpp"
#include "shmbus/topic.hpp"

namespace shmbus::detail {

struct StreamSweep {
  std::uint32_t conns_freed = 0;
  std::uint32_t chunks_returned = 0;  // given back for subscribers that left or died
  std::uint32_t chunks_freed = 0;     // of retired publishers, back in the pool
  std::uint32_t slots_freed = 0;
  // Work is left that a later sweep finishes (a connection closing or draining, a slot not yet free):
  // the broker sweeps again soon rather than at its next tick.
  bool pending = false;
};

class StreamSupervisor {
 public:
  explicit StreamSupervisor(TopicHandle& topic) : t_(topic), v_(topic.stream()) {}
  // Read-only use (statistics): only the const members may be called.
  explicit StreamSupervisor(const TopicHandle& topic)
      : t_(const_cast<TopicHandle&>(topic)), v_(topic.stream()) {}

  // A publisher slot for (owner, port): the one it has already (a retried request), else a free one,
  // connected to every active subscriber. `id` is what its samples carry.
  Result<std::uint32_t> attach_publisher(OwnerId owner, std::uint64_t port, std::uint64_t id);
  // After a broker restart: the slot must still be active and the owner's.
  Status reattach_publisher(std::uint32_t slot, OwnerId owner, std::uint64_t port);
  // The publisher left (or died): its connections become orphans, its chunks are collected as they free up.
  void retire_publisher(std::uint32_t slot);

  Result<std::uint32_t> attach_subscriber(OwnerId owner, std::uint64_t port);
  Status reattach_subscriber(std::uint32_t slot, OwnerId owner, std::uint64_t port);
  // The subscriber left (or died): its connections close, its chunks go back to their publishers.
  // `quiet`: it stopped reading by itself (it asked, or it is dead). Otherwise (the broker closes a slot
  // nobody claimed) the chunks go back once the subscriber acked the change or died.
  void close_subscriber(std::uint32_t slot, bool quiet);

  // The active slots of (owner, port), if any.
  std::optional<std::uint32_t> find_publisher(OwnerId owner, std::uint64_t port) const;
  std::optional<std::uint32_t> find_subscriber(OwnerId owner, std::uint64_t port) const;
  // Retire and close every slot of a dead process. Returns how many slots it let go.
  std::uint32_t on_death(OwnerId dead);
  // The periodic work: finish closing connections, drain orphans, collect retired publishers' chunks.
  StreamSweep sweep();
  // At adoption: rebuild the tables from the connection states. Returns how many entries it changed.
  std::uint32_t adopt();

  std::uint64_t queued_messages() const;  // unread submissions over all connections
  std::uint64_t delivered_total() const;
  std::uint64_t published_total() const;
  std::uint64_t dropped_total() const;

 private:
  Result<std::uint32_t> alloc_conn(std::uint32_t pub, std::uint32_t sub);
  // Connect a slot being activated to every active peer (a publisher slot to every active subscriber, or
  // the reverse) and enter each connection in both tables; on failure, free what it made.
  Status connect_to_peers(bool publisher, std::uint32_t slot);
  void free_conn(std::uint32_t k);
  void bump();
  // Exact positions, whatever a killed writer left in the informational words.
  std::uint64_t true_head(std::uint32_t k) const;
  std::uint64_t true_comp_head(std::uint32_t k) const;
  // Give back on k everything its (gone) subscriber has not. False if the completion ring filled up.
  // `live`: the subscriber lives (we closed its slot): give back only what it released (rel_of).
  bool return_refs(std::uint32_t k, std::uint32_t* returned, bool live);
  void collect_retired(std::uint32_t pub, StreamSweep& s);
  bool held(std::uint32_t sub, std::uint32_t chunk) const;
  void set_held(std::uint32_t sub, std::uint32_t chunk, bool on);
  bool released(std::uint32_t sub, std::uint32_t chunk) const;
  bool holds_any(std::uint32_t sub) const;

  TopicHandle& t_;
  const StreamView& v_;
};

}  // namespace shmbus::detail
