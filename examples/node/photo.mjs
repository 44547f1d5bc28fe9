// A JPEG or PNG photo to the RGB pixels the faceverify end-to-end graph takes, read as the Python
// library reads photos (faceverify/images.py, load_rgb): over 40 megapixels refused from the header,
// before decoding; 16-bit samples cut to their high byte; transparent pixels composited on white;
// a JPEG's EXIF orientation applied (a PNG's is not: PNG photos rarely carry one).
import { readFileSync } from "node:fs";
import jpeg from "jpeg-js";
import pngjs from "pngjs";

const MAX_PIXELS = 40_000_000; // the library's limit: faceverify.images.MAX_PIXELS
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

export class InputError extends Error {} // a bad photo or argument: one line on stderr, exit code 2

// { rgb: (H, W, 3) uint8 RGB values, row by row, width, height }
export function readPhoto(path) {
  let photo;
  try {
    const bytes = readFileSync(path);
    const png = bytes.subarray(0, 8).equals(PNG_SIGNATURE);
    const [width, height] = headerSize(bytes, png);
    if (width * height > MAX_PIXELS) {
      const megapixels = ((width * height) / 1e6).toFixed(1);
      throw new InputError(`${path} is ${width} × ${height} = ${megapixels} megapixels, over the 40-megapixel limit`);
    }
    photo = png ? pngjs.PNG.sync.read(bytes, { skipRescale: true })
                : jpeg.decode(bytes, { useTArray: true, maxResolutionInMP: MAX_PIXELS / 1e6 });
  } catch (error) {
    if (error instanceof InputError) throw error;
    if (error.message.startsWith("maxResolutionInMP")) throw new InputError(`${path} is over the 40-megapixel limit`);
    throw new InputError(`${path}: not a readable JPEG or PNG (${error.message})`);
  }
  // RGBA to RGB: alpha composited on white, rounded as Pillow's alpha_composite rounds. A gray or
  // RGB PNG's tRNS colour key is ignored, as there: pngjs blacks its pixels out, they get its colour back
  const { width, height, data, depth, colorType, transColor } = photo; // jpeg-js: 8-bit RGBA
  const max = depth < 8 && colorType !== 3 ? (1 << depth) - 1 : 255; // gray samples of 1, 2 or 4 bits
  const byte = depth === 16 ? (v) => v >> 8 : (v) => (v * 255) / max;
  const key = transColor?.map(byte);
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < data.length; i += 4, j += 3) {
    const alpha = byte(data[i + 3]);
    for (let c = 0; c < 3; c++) {
      const value = byte(data[i + c]);
      rgb[j + c] = key ? (alpha ? value : key[key.length === 1 ? 0 : c])
                       : Math.round((value * alpha + 255 * (255 - alpha)) / 255);
    }
  }
  const orientation = photo.exifBuffer ? exifOrientation(photo.exifBuffer) : 1;
  if (orientation >= 2 && orientation <= 8) return upright(rgb, width, height, orientation);
  return { rgb, width, height };
}

// [width, height] from the header: PNG's IHDR chunk, or a JPEG's SOFn segment (0xFF, marker, length)
function headerSize(bytes, png) {
  if (png) return [bytes.readUInt32BE(16), bytes.readUInt32BE(20)];
  for (let i = 2; i + 9 < bytes.length && bytes[i] === 0xff && bytes[i + 1] !== 0xda; ) {
    const marker = bytes[i + 1];
    if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
      return [bytes.readUInt16BE(i + 7), bytes.readUInt16BE(i + 5)];
    }
    i += marker === 0xff ? 1 : 2 + bytes.readUInt16BE(i + 2); // 0xFF 0xFF: a fill byte
  }
  return [0, 0]; // none before the scan: jpeg-js checks the same limit itself (maxResolutionInMP)
}

// EXIF orientation (tag 0x0112 of the first IFD; 1: upright), from jpeg-js's exifBuffer: "\0", then TIFF
function exifOrientation(exif) {
  try {
    const tiff = new DataView(exif.buffer, exif.byteOffset + 1, exif.length - 1);
    const little = tiff.getUint16(0) === 0x4949; // "II"; "MM": big-endian
    const ifd = tiff.getUint32(4, little);
    for (let i = 0, n = tiff.getUint16(ifd, little); i < n; i++) {
      const entry = ifd + 2 + 12 * i; // tag, type, count, value
      if (tiff.getUint16(entry, little) === 0x0112) return tiff.getUint16(entry + 8, little);
    }
  } catch {} // a truncated EXIF block: upright
  return 1;
}

// EXIF orientation 2-8: the mirroring and/or quarter turn that shows the photo upright (as Pillow's
// ImageOps.exif_transpose does)
function upright(rgb, width, height, orientation) {
  const swap = orientation >= 5; // 5-8: rows become columns
  const flipX = [2, 3, 7, 8].includes(orientation), flipY = [3, 4, 6, 7].includes(orientation);
  const [w, h] = swap ? [height, width] : [width, height];
  const out = new Uint8Array(rgb.length);
  for (let y = 0, j = 0; y < h; y++) {
    for (let x = 0; x < w; x++, j += 3) {
      const u = swap ? y : x, v = swap ? x : y; // the source pixel, before the mirrorings
      const i = 3 * ((flipY ? height - 1 - v : v) * width + (flipX ? width - 1 - u : u));
      out[j] = rgb[i];
      out[j + 1] = rgb[i + 1];
      out[j + 2] = rgb[i + 2];
    }
  }
  return { rgb: out, width: w, height: h };
}
