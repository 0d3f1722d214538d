import zlib from 'node:zlib';

type Crc32 = (data: string | Uint8Array, value?: number) => number;

/** CRC-32 (IEEE) of text (its UTF-8 bytes) or bytes, as 8 hex digits. Uses zlib.crc32 (Node >= 20.15) and a table fallback before. */
export function crc32Hex(text: string | Uint8Array): string {
  return crcHex(crc32(text));
}

/** Continues a CRC-32 (IEEE) over more bytes: `crc32Update(b, crc32Update(a))` is the CRC of a then b. */
export function crc32Update(data: Uint8Array, value = 0): number {
  return nativeCrc32 ? nativeCrc32(data, value) : tableCrc32(data, value);
}

/** A CRC-32 value as 8 hex digits (a table of byte pairs: twice as fast as toString(16).padStart). */
export function crcHex(c: number): string {
  return HEX[c >>> 24]! + HEX[(c >>> 16) & 0xff]! + HEX[(c >>> 8) & 0xff]! + HEX[c & 0xff]!;
}

const HEX = Array.from({ length: 256 }, (_, n) => n.toString(16).padStart(2, '0'));

const nativeCrc32 = (zlib as unknown as { crc32?: Crc32 }).crc32;

const crc32: (data: string | Uint8Array) => number = nativeCrc32 ? (data) => nativeCrc32(data) : tableCrc32;

let table: Uint32Array | undefined;

function tableCrc32(data: string | Uint8Array, value = 0): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
  }
  const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
  let crc = (value ^ 0xffffffff) >>> 0;
  for (const byte of bytes) crc = (table[(crc ^ byte) & 0xff] ?? 0) ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}
