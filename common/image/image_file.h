#ifndef MAL_COMMON_IMAGE_IMAGE_FILE_H_
#define MAL_COMMON_IMAGE_IMAGE_FILE_H_

// Structural checks of encoded image files, before decoding. OpenCV decodes a JPEG that ends early
// into a partly grey image and reports it only as libjpeg's "Premature end of JPEG file" on
// stderr, without a file name; a truncated PNG or BMP may fare the same. A partially decoded image
// is a bad sample, so the container is walked first (no pixel is decoded; a linear pass over the
// bytes).

#include <cstdint>
#include <opencv2/core.hpp>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mal::image {

// OK when `bytes` hold a complete image of a format we read:
//   JPEG: markers from SOI to EOI (ITU-T T.81 Annex B), entropy-coded data scanned for the next
//         marker, every segment length inside the file;
//   PNG:  signature, then chunks (length, type, data, CRC) up to IEND (PNG spec section 5);
//   BMP:  BITMAPFILEHEADER; for uncompressed (BI_RGB / BI_BITFIELDS) bitmaps the pixel array
//         (rows padded to 4 bytes) fits in the file.
// Other formats pass (the decoder decides). Errors are DataLoss, without a path (the caller adds
// it), saying what is wrong and where: "truncated JPEG: the compressed data ends at byte 6144 of
// 6144 without an end-of-image marker".
// Also refused (DataLoss): a JPEG (any SOFn marker in the file), PNG (IHDR) or BMP header
// declaring more than kMaxImagePixels pixels, before anything is allocated for it.
absl::Status CheckImageComplete(absl::string_view bytes);

// The most pixels (width x height) an image may have: 8192 x 8192. Larger headers are refused
// by CheckImageComplete (a corrupt header or a decompression bomb would otherwise make OpenCV
// allocate gigabytes; its own limit, 2^30 px, is read once at load and applies to the reduced
// size at half_size).
inline constexpr uint64_t kMaxImagePixels = uint64_t{1} << 26;

// True for the formats mal decodes, by their first bytes: JPEG, PNG, BMP, the formats whose
// declared size is checked before decoding. OpenCV would also try its other decoders (GDAL,
// GDCM/DICOM, OpenJPEG, OpenEXR, TIFF, WebP, PxM ...) on anything else, and the image_decode
// fuzzer found bytes that abort the process inside GDCM; the face datasets mal reads are JPEG
// and PNG.
bool IsSupportedImage(absl::string_view bytes);

// The size (px) an encoded JPEG (its largest frame), PNG or BMP declares in its header, read
// without decoding; 0 x 0 when it declares none that this reads. The checks of
// CheckImageComplete and of a server's own pixel limit come before any decoding.
struct DeclaredSize {
  const char* format = "";
  uint64_t width = 0, height = 0;
};
DeclaredSize DeclaredImageSize(absl::string_view bytes);

// Decodes encoded bytes (JPEG, PNG, BMP) to 8-bit BGR, at half the width and height
// when `half_size` (enough to tell a good file from a bad one, at a quarter of the cost). Errors
// (InvalidArgument) start with `what`: empty bytes, another format (IsSupportedImage), an
// incomplete container or a header over kMaxImagePixels (CheckImageComplete), or bytes OpenCV
// cannot decode. The one decoder of the project: dataset checks, training batches and inference
// all come through here.
absl::StatusOr<cv::Mat> DecodeImageBytes(const std::string& bytes, const std::string& what,
                                         bool half_size = false);

}  // namespace mal::image

#endif  // MAL_COMMON_IMAGE_IMAGE_FILE_H_
