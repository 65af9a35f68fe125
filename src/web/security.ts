/**
 * Security headers on every answer: helmet sets them on the raw response in the first
 * request hook, so they reach answers the framework never serialises too (the event
 * stream, which takes over the socket, and errors from the hooks that refuse a request).
 */
import helmet from '@fastify/helmet';
import type { FastifyInstance } from 'fastify';

/** Only this origin's scripts, styles and connections; images also from blob: and data: (previews). */
const CSP_DIRECTIVES = {
  defaultSrc: ["'self'"],
  scriptSrc: ["'self'"],
  styleSrc: ["'self'"],
  imgSrc: ["'self'", 'blob:', 'data:'],
  connectSrc: ["'self'"],
  objectSrc: ["'none'"],
  baseUri: ["'none'"],
  formAction: ["'self'"],
  frameAncestors: ["'none'"],
};

const PERMISSIONS_POLICY = 'camera=(), microphone=(), geolocation=()';

export async function registerSecurityHeaders(app: FastifyInstance): Promise<void> {
  await app.register(helmet, {
    // helmet's defaults add upgrade-insecure-requests, which breaks the page served over
    // plain HTTP on anything but localhost: the policy is spelled out in full instead.
    contentSecurityPolicy: { useDefaults: false, directives: CSP_DIRECTIVES },
    xFrameOptions: { action: 'deny' },
    referrerPolicy: { policy: 'no-referrer' },
    crossOriginOpenerPolicy: { policy: 'same-origin' },
    crossOriginResourcePolicy: { policy: 'same-origin' },
    // HSTS belongs to whatever terminates TLS in front of the service; sent from here it
    // would also bind every subdomain of a host that merely proxies to it.
    strictTransportSecurity: false,
  });
  // helmet has no Permissions-Policy; set the same way, on the raw response.
  app.addHook('onRequest', async (_request, reply) => {
    reply.raw.setHeader('permissions-policy', PERMISSIONS_POLICY);
  });
}

/**
 * For answers written straight to the socket, when the HTTP parser refused a request before
 * any hook ran: a JSON error that nothing may sniff, frame or run.
 */
export const RAW_ERROR_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': "default-src 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-resource-policy': 'same-origin',
};
