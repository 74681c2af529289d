// The topic directory of a domain: one segment (/dev/shm/shmbus.<domain>.dir) that maps topic names to
// topic ids and kinds. The broker is its only writer; clients read it without locks.
//
// Size: `max_topics` entries, chosen by the broker that creates it (its config's [limits] max_topics);
// a broker that adopts a directory keeps its size.
//
// Memory ordering: each entry is a seqlock. The broker makes `version` odd (relaxed store + release
// fence), writes the entry, then makes it even with release (R8); readers load it with acquire (A8),
// copy, fence (acquire), and re-load: an odd or changed version means retry. `generation` is bumped
// (release) after every change.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shmbus/config.hpp"
#include "shmbus/options.hpp"
#include "shmbus/result.hpp"
#include "shmbus/segment.hpp"

namespace shmbus {

inline constexpr std::size_t kNameCap = 208;                    // bytes reserved for a topic name
inline constexpr std::uint32_t kMaxDirectoryTopics = 1u << 20;  // a sanity bound on an adopted directory

struct TopicEntry {
  std::atomic<std::uint64_t> version;  // seqlock: odd while the broker writes (R8/A8)
  std::uint64_t topic_id;              // 0: free entry
  std::uint32_t kind;
  std::uint32_t name_len;
  char name[kNameCap];
  std::uint8_t pad[256 - 24 - kNameCap];
};
static_assert(sizeof(TopicEntry) == 256);

struct DirectoryShared {
  std::atomic<std::uint64_t> broker_owner;  // OwnerId of the broker that runs (or ran) the domain
  std::atomic<std::uint64_t> generation;    // bumped on every change
  std::uint64_t next_topic_id;              // broker only
  std::uint32_t max_topics;                 // entries that follow this header
  std::uint32_t reserved;
  // The pid namespace of the brokers that stamp owner ids in this domain (PidNamespace, owner.hpp), 0
  // until the first broker records it. Broker only.
  std::uint64_t pid_ns_ino;
  std::uint64_t pid_ns_dev;
  std::uint8_t pad[kCacheLine - 48];
  // TopicEntry entries[max_topics] follow.
  TopicEntry* entries() { return reinterpret_cast<TopicEntry*>(this + 1); }
  const TopicEntry* entries() const { return reinterpret_cast<const TopicEntry*>(this + 1); }
};
static_assert(sizeof(DirectoryShared) == kCacheLine);
static_assert(std::is_standard_layout_v<DirectoryShared>);

struct TopicInfo {
  std::uint64_t id = 0;
  TopicKind kind = TopicKind::stream;
  std::string name;
};

// Client side: read the directory (seqlock reads; never blocks on the broker).
class DirectoryView {
 public:
  static Result<DirectoryView> open(std::string_view domain);
  std::optional<TopicInfo> find(std::string_view name) const;
  std::vector<TopicInfo> list() const;
  std::uint64_t generation() const { return d_->generation.load(std::memory_order_acquire); }
  DirectoryShared* shared() const { return d_; }

 private:
  std::optional<TopicInfo> read_entry(const TopicEntry& e) const;
  Segment seg_;
  DirectoryShared* d_ = nullptr;
  std::uint32_t max_topics_ = 0;  // read once at open, checked against the mapping
};

// Broker side: create or adopt the directory; add and remove entries (the broker is the only writer).
class DirectoryWriter {
 public:
  // Open and validate an existing directory (adopt), or create one of `max_topics` entries when there is
  // none or it is invalid (the invalid one is removed; the error it gave is returned in *replaced_reason).
  static Result<DirectoryWriter> create_or_adopt(std::string_view domain, unsigned mode,
                                                 std::string* replaced_reason,
                                                 gid_t group = static_cast<gid_t>(-1),
                                                 std::uint32_t max_topics = 1024);
  Result<std::uint64_t> add(std::string_view name, TopicKind kind);  // returns the new topic id
  bool remove(std::string_view name);
  std::vector<TopicInfo> list() const;
  std::optional<TopicInfo> find(std::string_view name) const;
  DirectoryShared* shared() const { return d_; }
  std::uint32_t max_topics() const { return max_topics_; }
  void unlink();  // remove the segment's name

 private:
  Segment seg_;
  DirectoryShared* d_ = nullptr;
  std::uint32_t max_topics_ = 0;
  std::string domain_;
};

}  // namespace shmbus
