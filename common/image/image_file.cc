#include "common/image/image_file.h"

#include <cstdint>
#include <cstdlib>
#include <opencv2/imgcodecs.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace mal::image {
namespace {

uint32_t Be16(absl::string_view b, size_t at) {
  return (uint32_t{static_cast<uint8_t>(b[at])} << 8) | static_cast<uint8_t>(b[at + 1]);
}
uint32_t Be32(absl::string_view b, size_t at) { return (Be16(b, at) << 16) | Be16(b, at + 2); }
uint32_t Le16(absl::string_view b, size_t at) {
  return static_cast<uint8_t>(b[at]) | (uint32_t{static_cast<uint8_t>(b[at + 1])} << 8);
}
uint32_t Le32(absl::string_view b, size_t at) { return Le16(b, at) | (Le16(b, at + 2) << 16); }

absl::Status Truncated(absl::string_view format, absl::string_view where, size_t size) {
  return absl::DataLossError(
      absl::StrCat("truncated ", format, ": ", where, " (file of ", size, " bytes)"));
}

absl::Status TooLarge(absl::string_view format, uint64_t width, uint64_t height) {
  return absl::DataLossError(absl::StrCat(format, " of ", width, " x ", height,
                                          " px is over the limit of ", kMaxImagePixels,
                                          " px (a corrupt header or a decompression bomb)"));
}

// The size every header of the file declares, before any decoder sees it. JPEG: every SOFn
// marker anywhere in the file (FF C0..CF but DHT C4, JPG C8, DAC CC; then length, precision,
// height, width), not only where a segment walk would find one, since a decoder may resync on
// bytes the walk skips (the fuzzer found such a file); PNG: IHDR; BMP: the info header (16-bit
// sizes in OS/2 1.x headers, 32-bit otherwise).
absl::Status CheckDeclaredSize(absl::string_view b) {
  const DeclaredSize d = DeclaredImageSize(b);
  if (d.width * d.height > kMaxImagePixels) return TooLarge(d.format, d.width, d.height);
  return absl::OkStatus();
}

absl::Status CheckJpeg(absl::string_view b) {
  size_t pos = 2;  // after SOI
  while (true) {
    if (pos >= b.size()) return Truncated("JPEG", "no end-of-image marker", b.size());
    if (static_cast<uint8_t>(b[pos]) != 0xFF) {
      // Bytes between segments (padding after an APP segment, a short length): libjpeg skips
      // them to the next marker and decodes the image whole, so do we.
      pos = b.find('\xFF', pos);
      if (pos == absl::string_view::npos)
        return Truncated("JPEG", "no end-of-image marker", b.size());
    }
    while (pos < b.size() && static_cast<uint8_t>(b[pos]) == 0xFF) ++pos;  // fill bytes
    if (pos >= b.size()) return Truncated("JPEG", "no end-of-image marker", b.size());
    const uint8_t marker = static_cast<uint8_t>(b[pos++]);
    if (marker == 0xD9) return absl::OkStatus();                         // EOI
    if ((marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) continue;  // RSTn, TEM: no length
    if (pos + 2 > b.size()) return Truncated("JPEG", "a segment header is cut off", b.size());
    const size_t length = Be16(b, pos);
    if (length < 2)
      return absl::DataLossError(
          absl::StrCat("corrupt JPEG: segment length ", length, " at byte ", pos));
    if (pos + length > b.size()) {
      return Truncated("JPEG",
                       absl::StrCat("the segment at byte ", pos - 2, " needs ", length, " bytes"),
                       b.size());
    }
    pos += length;
    if (marker != 0xDA) continue;  // SOS: entropy-coded data follows, up to the next marker
    while (true) {
      const size_t ff = b.find('\xFF', pos);
      if (ff == absl::string_view::npos || ff + 1 >= b.size()) {
        return Truncated("JPEG", "the compressed data ends without an end-of-image marker",
                         b.size());
      }
      const uint8_t next = static_cast<uint8_t>(b[ff + 1]);
      if (next == 0x00 || (next >= 0xD0 && next <= 0xD7) || next == 0xFF) {
        pos = ff + (next == 0xFF ? 1 : 2);  // stuffed byte, restart marker, or fill
        continue;
      }
      pos = ff;
      break;
    }
  }
}

absl::Status CheckPng(absl::string_view b) {
  size_t pos = 8;  // after the signature
  while (true) {
    if (pos + 8 > b.size()) return Truncated("PNG", "no IEND chunk", b.size());
    const uint64_t length = Be32(b, pos);
    const absl::string_view type = b.substr(pos + 4, 4);
    if (pos + 12 + length > b.size()) {
      return Truncated(
          "PNG",
          absl::StrCat("the ", type, " chunk at byte ", pos, " needs ", length + 12, " bytes"),
          b.size());
    }
    if (type == "IEND") return absl::OkStatus();
    pos += 12 + length;
  }
}

absl::Status CheckBmp(absl::string_view b) {
  if (b.size() < 18) return Truncated("BMP", "the headers are cut off", b.size());
  const uint64_t offset = Le32(b, 10);
  const uint32_t header = Le32(b, 14);
  // OS/2 headers (12 and 64 bytes; compression 3 means Huffman there): left to the decoder.
  if (header < 40 || header == 64) return absl::OkStatus();
  if (b.size() < 34) return Truncated("BMP", "the headers are cut off", b.size());
  const int64_t width = static_cast<int32_t>(Le32(b, 18));
  const int64_t height = std::llabs(static_cast<int32_t>(Le32(b, 22)));
  const uint32_t bpp = Le16(b, 28);
  const uint32_t compression = Le32(b, 30);
  if (compression != 0 && compression != 3) return absl::OkStatus();  // RLE, JPEG, PNG inside
  if (width <= 0 || bpp == 0 || bpp > 32) {
    return absl::DataLossError(
        absl::StrCat("corrupt BMP: width ", width, ", ", bpp, " bits per pixel"));
  }
  const uint64_t row = ((static_cast<uint64_t>(width) * bpp + 31) / 32) * 4;
  const uint64_t need = offset + row * static_cast<uint64_t>(height);
  if (need > b.size()) {
    return Truncated("BMP", absl::StrCat(width, " x ", height, " pixels need ", need, " bytes"),
                     b.size());
  }
  return absl::OkStatus();
}

}  // namespace

DeclaredSize DeclaredImageSize(absl::string_view b) {
  DeclaredSize d;
  if (absl::StartsWith(b, "\xFF\xD8")) {
    d.format = "JPEG";
    for (size_t at = b.find('\xFF'); at != absl::string_view::npos && at + 9 <= b.size();
         at = b.find('\xFF', at + 1)) {
      const uint8_t m = static_cast<uint8_t>(b[at + 1]);
      if (m < 0xC0 || m > 0xCF || m == 0xC4 || m == 0xC8 || m == 0xCC) continue;
      const uint64_t height = Be16(b, at + 5), width = Be16(b, at + 7);
      if (width * height > d.width * d.height) {
        d.width = width;
        d.height = height;
      }
    }
  } else if (b.size() >= 24 && absl::StartsWith(b, absl::string_view("\x89PNG", 4))) {
    d.format = "PNG";
    d.width = Be32(b, 16);
    d.height = Be32(b, 20);
  } else if (b.size() >= 22 && absl::StartsWith(b, "BM")) {
    d.format = "BMP";
    const uint32_t header = Le32(b, 14);
    if (header == 12) {
      d.width = Le16(b, 18);
      d.height = Le16(b, 20);
    } else if (b.size() >= 26) {
      d.width = static_cast<uint64_t>(std::llabs(static_cast<int32_t>(Le32(b, 18))));
      d.height = static_cast<uint64_t>(std::llabs(static_cast<int32_t>(Le32(b, 22))));
    }
  }
  return d;
}

absl::Status CheckImageComplete(absl::string_view bytes) {
  if (absl::Status size = CheckDeclaredSize(bytes); !size.ok()) return size;
  if (bytes.size() >= 3 && bytes.substr(0, 3) == "\xFF\xD8\xFF") return CheckJpeg(bytes);
  if (bytes.size() >= 8 && bytes.substr(0, 8) == absl::string_view("\x89PNG\r\n\x1a\n", 8)) {
    return CheckPng(bytes);
  }
  if (bytes.size() >= 2 && bytes.substr(0, 2) == "BM") return CheckBmp(bytes);
  return absl::OkStatus();
}

bool IsSupportedImage(absl::string_view b) {
  auto starts = [&](absl::string_view magic) { return absl::StartsWith(b, magic); };
  return starts("\xFF\xD8\xFF") || starts(absl::string_view("\x89PNG\r\n\x1a\n", 8)) ||
         starts("BM");
}

absl::StatusOr<cv::Mat> DecodeImageBytes(const std::string& bytes, const std::string& what,
                                         bool half_size) {
  if (bytes.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": empty image"));
  if (!IsSupportedImage(bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": not a JPEG, PNG or BMP image (by its first bytes)"));
  }
  if (absl::Status complete = CheckImageComplete(bytes); !complete.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", complete.message()));
  }
  cv::Mat m;
  try {
    m = cv::imdecode(
        cv::Mat(1, static_cast<int>(bytes.size()), CV_8UC1, const_cast<char*>(bytes.data())),
        half_size ? cv::IMREAD_REDUCED_COLOR_2 : cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": cannot decode: ", e.what()));
  }
  if (m.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": not a decodable image"));
  return m;
}

}  // namespace mal::image
