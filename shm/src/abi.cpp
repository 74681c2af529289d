// The ABI hash written into every segment header (see segment.hpp).
#include "shmbus/chunk_pool.hpp"
#include "shmbus/eventcount.hpp"
#include "shmbus/mpmc_ring.hpp"
#include "shmbus/segment.hpp"
#include "shmbus/spsc_ring.hpp"
#include "shmbus/topic.hpp"

namespace shmbus {
namespace {

constexpr std::uint64_t fnv1a(std::uint64_t h, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    h ^= (v >> (8 * i)) & 0xff;
    h *= 0x100000001b3ULL;
  }
  return h;
}

template <typename T>
constexpr std::uint64_t add_type(std::uint64_t h) {
  return fnv1a(fnv1a(h, sizeof(T)), alignof(T));
}

constexpr std::uint64_t compute() {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  h = fnv1a(h, kLayoutVersion);
  h = fnv1a(h, kCacheLine);
  h = fnv1a(h, kHwLine);
  h = fnv1a(h, __BYTE_ORDER__);
  h = fnv1a(h, sizeof(void*));
  h = add_type<SegmentHeader>(h);
  h = add_type<SpscSlotHeader>(h);
  h = add_type<SpscRingShared>(h);
  h = add_type<MpmcRingShared>(h);
  h = add_type<ChunkHeader>(h);
  h = add_type<ChunkPoolShared>(h);
  h = add_type<EventCountShared>(h);
  h = add_type<MessageHeader>(h);
  h = add_type<SubscriberSlot>(h);
  h = add_type<WaiterRecord>(h);
  h = fnv1a(h, kWaiterLanes);
  h = add_type<TopicShared>(h);
  h = add_type<TopicEntry>(h);
  h = add_type<DirectoryShared>(h);
  h = fnv1a(h, kMaxPoolRings);
  return h;
}

}  // namespace

std::uint64_t abi_hash() noexcept {
  static constexpr std::uint64_t kHash = compute();
  return kHash;
}

}  // namespace shmbus
