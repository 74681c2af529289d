// The user half of a queue topic (topic.hpp, "kind queue"): producers allocate a chunk and push it on the
// queue ring, consumers pop it and give it back (release) or put it back (requeue). The chunk hand-overs
// and their crash proof are the ChunkPool's (chunk_pool.hpp).
#include "shmbus/topic.hpp"

namespace shmbus {

// A producer that finds the queue full (or no free chunk) pause-polls this many times before parking: a
// consumer makes room within microseconds, and parking would make every consumer's pop pay a futex wake
// (a syscall, ~1-2 us) until the producer is back on a CPU (~10-45 us here).
constexpr std::uint32_t kQueueRoomSpin = 2000;

TopicHandle::IoStatus TopicHandle::allocate(std::uint32_t& chunk, const Deadline& deadline) noexcept {
  if (pool_.try_allocate(chunk) == RingStatus::ok) return IoStatus::ok;
  return wait_for(
             WaitOn::space, [&] { return pool_.try_allocate(chunk) == RingStatus::ok; }, deadline,
             kQueueRoomSpin)
             ? IoStatus::ok
             : IoStatus::no_chunk;
}

void TopicHandle::release(std::uint32_t chunk) noexcept {
  pool_.release(chunk);
  notify(WaitOn::space);
}

TopicHandle::IoStatus TopicHandle::push_queue(std::uint32_t chunk, const Deadline& deadline) noexcept {
  // Below depth, push. The check and the push are two steps, so concurrent producers may overshoot depth
  // by one message each; the ring has room for every chunk, so the push itself never fails for room.
  //
  // The size is tail minus a head this process read earlier (head only grows, so the estimate is never
  // below the truth): head is written by every consumer's pop, and reading it for every message cost a
  // cache-line transfer per message; it is re-read only when the estimate says full.
  const auto room = [&] {
    const MpmcRingShared* r = pool_.ring(kQueueRing).shared();
    std::atomic_ref<std::uint64_t> cached(cached_head_);  // process-local; relaxed: a hint
    const std::uint64_t t = r->tail.load(std::memory_order_acquire);
    std::uint64_t h = cached.load(std::memory_order_relaxed);
    if (t - h >= depth_) {
      h = r->head.load(std::memory_order_acquire);
      cached.store(h, std::memory_order_relaxed);
    }
    // t - h wraps to a huge value when head passed the tail we read (the queue drained meanwhile): room,
    // as size_approx() clamps it.
    const std::uint64_t size = t - h;
    return (size < depth_ || size > pool_.ring(kQueueRing).capacity()) &&
           pool_.try_push(kQueueRing, chunk) == RingStatus::ok;
  };
  if (!wait_for(WaitOn::space, room, deadline, kQueueRoomSpin)) return IoStatus::timed_out;
  notify(WaitOn::not_empty);
  return IoStatus::ok;
}

TopicHandle::IoStatus TopicHandle::requeue(std::uint32_t chunk) noexcept {
  if (pool_.try_push(kQueueRing, chunk) != RingStatus::ok) return IoStatus::timed_out;
  notify(WaitOn::not_empty);
  return IoStatus::ok;
}

}  // namespace shmbus
