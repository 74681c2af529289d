// The topic directory (detail/directory.hpp): seqlocked entries, written only by the broker.
#include "shmbus/detail/directory.hpp"

#include <cstring>

#include "shmbus/paths.hpp"

namespace shmbus {
namespace {

constexpr std::string_view kDirectoryKind = "directory";

std::string quoted(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

void put_name(char* dst, std::uint32_t* len, std::string_view name) {
  std::memset(dst, 0, kNameCap);
  std::memcpy(dst, name.data(), name.size());
  *len = static_cast<std::uint32_t>(name.size());
}

// The directory's size, read once and checked against the mapping; 0 when it does not fit.
std::uint32_t checked_max_topics(const Segment& seg) {
  if (seg.header().root_offset == 0 || !seg.in_bounds(seg.header().root_offset, sizeof(DirectoryShared)))
    return 0;
  const std::uint32_t n = seg.root<DirectoryShared>()->max_topics;
  if (n == 0 || n > kMaxDirectoryTopics ||
      !seg.in_bounds(seg.header().root_offset + sizeof(DirectoryShared),
                     std::uint64_t{n} * sizeof(TopicEntry)))
    return 0;
  return n;
}

}  // namespace

Result<DirectoryView> DirectoryView::open(std::string_view domain) {
  if (auto ok = check_domain_name(domain); !ok) return ok.error();
  auto seg =
      Segment::open(directory_segment_name(domain), {.writable = false, .expect_kind = kDirectoryKind});
  if (!seg) return seg.error();
  const std::uint32_t n = checked_max_topics(*seg);
  if (n == 0)
    return Error(Errc::truncated, "directory of domain " + quoted(domain) + " is damaged or too small");
  DirectoryView v;
  v.seg_ = std::move(seg).value();
  v.d_ = v.seg_.root<DirectoryShared>();
  v.max_topics_ = n;
  return v;
}

std::optional<TopicInfo> DirectoryView::read_entry(const TopicEntry& e) const {
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const std::uint64_t v1 = e.version.load(std::memory_order_acquire);  // A8: pairs with R8.
    if (v1 & 1) continue;
    TopicInfo info;
    info.id = e.topic_id;
    info.kind = static_cast<TopicKind>(e.kind);
    const std::uint32_t len = e.name_len <= kMaxTopicNameLen ? e.name_len : 0;
    info.name.assign(e.name, len);
    std::atomic_thread_fence(std::memory_order_acquire);  // the copy happens before the re-check
    if (e.version.load(std::memory_order_relaxed) != v1) continue;
    if (info.id == 0) return std::nullopt;
    return info;
  }
  return std::nullopt;
}

std::optional<TopicInfo> DirectoryView::find(std::string_view name) const {
  for (std::uint32_t i = 0; i < max_topics_; ++i) {
    auto e = read_entry(d_->entries()[i]);
    if (e && e->name == name) return e;
  }
  return std::nullopt;
}

std::vector<TopicInfo> DirectoryView::list() const {
  std::vector<TopicInfo> out;
  for (std::uint32_t i = 0; i < max_topics_; ++i)
    if (auto e = read_entry(d_->entries()[i])) out.push_back(*e);
  return out;
}

Result<DirectoryWriter> DirectoryWriter::create_or_adopt(std::string_view domain, unsigned mode,
                                                         std::string* replaced_reason, gid_t group,
                                                         std::uint32_t max_topics) {
  if (auto ok = check_domain_name(domain); !ok) return ok.error();
  if (max_topics == 0 || max_topics > kMaxDirectoryTopics)
    return Error(Errc::invalid_argument, "max topics " + std::to_string(max_topics) + " must be from 1 to " +
                                             std::to_string(kMaxDirectoryTopics));
  const std::string name = directory_segment_name(domain);
  DirectoryWriter w;
  w.domain_ = std::string(domain);
  auto seg = Segment::open(name, {.writable = true, .expect_kind = kDirectoryKind});
  if (seg) {
    if (const std::uint32_t n = checked_max_topics(*seg); n != 0) {
      w.seg_ = std::move(seg).value();
      w.d_ = w.seg_.root<DirectoryShared>();
      w.max_topics_ = n;  // an adopted directory keeps the size it was made with
      // An entry left odd by a broker killed mid-write: finish it as "free" (its topic is re-validated by
      // the adopting broker anyway).
      for (std::uint32_t i = 0; i < n; ++i) {
        TopicEntry& e = w.d_->entries()[i];
        if (e.version.load(std::memory_order_relaxed) & 1) {
          e.topic_id = 0;
          e.version.fetch_add(1, std::memory_order_release);
        }
      }
      return w;
    }
  }
  if (!seg && seg.error().code() != Errc::not_found) {
    if (replaced_reason) *replaced_reason = seg.error().message();
    (void)Segment::remove(name);
  } else if (seg) {
    if (replaced_reason) *replaced_reason = "directory segment " + quoted(name) + " has an unexpected layout";
    seg->unmap();
    (void)Segment::remove(name);
  }
  auto created = Segment::create(name, {.size = sizeof(SegmentHeader) + sizeof(DirectoryShared) + kCacheLine +
                                                std::uint64_t{max_topics} * sizeof(TopicEntry),
                                        .mode = mode == 0 ? 0644u : mode,
                                        .group = group,
                                        .kind = kDirectoryKind});
  if (!created) return created.error();
  auto ref = created->allocate<DirectoryShared>(1, kCacheLine);
  if (!ref) return ref.error();
  auto entries = created->allocate<TopicEntry>(max_topics, alignof(TopicEntry));
  if (!entries) return entries.error();
  DirectoryShared* d = created->at(*ref);
  SHMBUS_ASSERT(reinterpret_cast<std::byte*>(d->entries()) == created->base() + entries->offset);
  d->max_topics = max_topics;
  d->next_topic_id = 1;
  created->set_root(*ref);
  created->publish();
  w.seg_ = std::move(created).value();
  w.d_ = d;
  w.max_topics_ = max_topics;
  return w;
}

Result<std::uint64_t> DirectoryWriter::add(std::string_view name, TopicKind kind) {
  if (auto ok = check_topic_name(name); !ok) return ok.error();
  if (find(name)) return Error(Errc::already_exists, "topic " + quoted(name) + " already exists");
  for (std::uint32_t i = 0; i < max_topics_; ++i) {
    TopicEntry& e = d_->entries()[i];
    if (e.topic_id != 0) continue;
    const std::uint64_t id = d_->next_topic_id++;
    // R8: seqlock write. Odd first, fence so the field stores cannot move above it, even last.
    e.version.store(e.version.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    e.topic_id = id;
    e.kind = static_cast<std::uint32_t>(kind);
    put_name(e.name, &e.name_len, name);
    e.version.store(e.version.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    d_->generation.fetch_add(1, std::memory_order_release);
    return id;
  }
  return Error(Errc::no_space, "the directory holds " + std::to_string(max_topics_) +
                                   " topics already ([limits] max_topics of the broker that created it)");
}

bool DirectoryWriter::remove(std::string_view name) {
  for (std::uint32_t i = 0; i < max_topics_; ++i) {
    TopicEntry& e = d_->entries()[i];
    if (e.topic_id == 0 || std::string_view(e.name, e.name_len) != name) continue;
    e.version.store(e.version.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    e.topic_id = 0;
    e.version.store(e.version.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    d_->generation.fetch_add(1, std::memory_order_release);
    return true;
  }
  return false;
}

std::vector<TopicInfo> DirectoryWriter::list() const {
  std::vector<TopicInfo> out;
  for (std::uint32_t i = 0; i < max_topics_; ++i) {
    const TopicEntry& e = d_->entries()[i];
    if (e.topic_id != 0)
      out.push_back({e.topic_id, static_cast<TopicKind>(e.kind),
                     std::string(e.name, e.name_len <= kMaxTopicNameLen ? e.name_len : 0)});
  }
  return out;
}

std::optional<TopicInfo> DirectoryWriter::find(std::string_view name) const {
  for (std::uint32_t i = 0; i < max_topics_; ++i) {
    const TopicEntry& e = d_->entries()[i];
    if (e.topic_id != 0 && e.name_len <= kMaxTopicNameLen && std::string_view(e.name, e.name_len) == name)
      return TopicInfo{e.topic_id, static_cast<TopicKind>(e.kind), std::string(name)};
  }
  return std::nullopt;
}

void DirectoryWriter::unlink() {
  (void)Segment::remove(directory_segment_name(domain_));
}

}  // namespace shmbus
