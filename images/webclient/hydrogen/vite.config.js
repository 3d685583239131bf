import { defineConfig } from "vite";

export default defineConfig({
  base: "./",
  logLevel: "warn",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // Keep wasm and the download sandbox as real files: Hydrogen loads them by URL.
    assetsInlineLimit: 0,
    reportCompressedSize: false,
  },
});
