import type { Job } from "./types.js";

/**
 * The URLs of every image and video a succeeded job made, in order: the
 * `images` of most image operations, the one `image` of upscale and
 * remove-bg, the `video` of video and turntable. Empty for a job that has
 * not succeeded (or a result with none of them).
 */
export function resultUrls(job: Pick<Job, "state" | "result">): string[] {
  const r: unknown = job.result;
  if (job.state !== "succeeded" || r === null || typeof r !== "object") return [];
  const urls: string[] = [];
  const add = (file: unknown) => {
    if (file !== null && typeof file === "object" && typeof (file as { url?: unknown }).url === "string") {
      urls.push((file as { url: string }).url);
    }
  };
  const { images, image, video } = r as { images?: unknown; image?: unknown; video?: unknown };
  if (Array.isArray(images)) images.forEach(add);
  add(image);
  add(video);
  return urls;
}
