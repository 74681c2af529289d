#include "stats.hpp"

#include "shmbus/detail/stream_supervisor.hpp"

namespace shmbus::broker {

nlohmann::json topic_stats(TopicHandle& topic) {
  const TopicShared* t = topic.shared();
  // Relaxed loads: statistics, read while clients keep counting; each number is a snapshot on its own.
  const bool queue = topic.kind() == TopicKind::queue;
  std::uint64_t delivered = t->delivered.load(std::memory_order_relaxed);
  std::uint64_t dropped = t->dropped.load(std::memory_order_relaxed);
  std::uint64_t published = t->published.load(std::memory_order_relaxed);
  std::uint32_t subscribers = 0, publishers = 0;
  if (!queue) {
    const detail::StreamSupervisor sup(topic);
    delivered = sup.delivered_total();
    dropped = sup.dropped_total();
    published = sup.published_total();
    subscribers = topic.active_subscribers();
    publishers = topic.active_publishers();
  }
  const std::uint64_t acked = t->acked.load(std::memory_order_relaxed);
  const std::uint64_t nacked = t->nacked.load(std::memory_order_relaxed);
  const std::uint64_t redelivered =
      nacked + topic.pool().shared()->redelivered.load(std::memory_order_relaxed);
  const std::uint64_t queued = topic.queued_messages();
  std::uint64_t in_flight = queued;
  if (queue && delivered > acked + redelivered) in_flight += delivered - acked - redelivered;
  return {{"name", topic.name()},
          {"id", t->topic_id},
          {"kind", to_string(topic.kind())},
          {"depth", topic.depth()},
          {"max_size", topic.max_size()},
          {"overflow", to_string(topic.overflow())},
          {"max_subscribers", topic.max_subscribers()},
          {"subscribers", subscribers},
          {"max_publishers", topic.max_publishers()},
          {"publishers", publishers},
          {"published", published},
          {"delivered", delivered},
          {"acked", acked},
          {"dropped", dropped},
          {"redelivered", redelivered},
          {"queued", queued},
          {"in_flight", in_flight}};
}

}  // namespace shmbus::broker
