// Per-topic statistics, as the broker reports them in the "topics" reply (see shmbus/detail/control.hpp).
//
// Counters come from the topic segment (TopicShared, relaxed: statistics only) and are totals since the
// topic was created:
//   published    messages accepted by the topic (stream: publish calls; queue: pushes)
//   delivered    messages taken by subscribers or consumers (a redelivered message counts again). For
//                streams each subscriber counts in its own slot, and each publisher its published
//                messages in its slot; the stream supervisor folds a slot's counts into TopicShared when
//                it frees the slot, so a total is that plus the counts of the slots in use.
//   acked        queue messages acknowledged
//   dropped      stream messages a subscriber missed (drop-oldest overwrote them, or its connection stayed
//                full: block past the deadline, or drop-oldest with a chunk message at its oldest)
//   redelivered  queue messages put back for another consumer: nacked (TopicShared::nacked), or left
//                unacked by a consumer that died (pushed back by the broker's reclaim)
// and two gauges:
//   queued       messages sitting in the topic's rings now (every connection, or the queue)
//   in_flight    messages accepted and not yet finished with. Queue: queued plus those taken and not yet
//                acked, i.e. queued + max(0, delivered - acked - redelivered) (an ack, a nack or a
//                redelivery ends one delivery; the next pop starts another). Stream: queued (a stream
//                message is finished with once its subscriber takes it).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>

#include "shmbus/topic.hpp"

namespace shmbus::broker {

// {"name","id","kind","depth","max_size","overflow","max_subscribers","subscribers","max_publishers",
//  "publishers","published","delivered","acked","dropped","redelivered","queued","in_flight"}
nlohmann::json topic_stats(TopicHandle& topic);

}  // namespace shmbus::broker
