// Validate Kubernetes objects against the published CRD schemas shipped by @kubernetes-models.
// stdin: a JSON array of objects; stdout: a JSON array with, per object, null (valid) or the errors.
import { BackendConfig } from "@kubernetes-models/gke/cloud.google.com/v1/BackendConfig";
import { GCPBackendPolicy } from "@kubernetes-models/gke/networking.gke.io/v1/GCPBackendPolicy";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";
import { VirtualService } from "@kubernetes-models/istio/networking.istio.io/v1/VirtualService";
import { ServersTransport } from "@kubernetes-models/traefik/traefik.io/v1alpha1/ServersTransport";

const MODELS = new Map(
  [BackendConfig, GCPBackendPolicy, HTTPRoute, VirtualService, ServersTransport].map((m) => [
    `${m.apiVersion}/${m.kind}`,
    m,
  ]),
);

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const objects = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const results = objects.map((object) => {
  const Model = MODELS.get(`${object.apiVersion}/${object.kind}`);
  if (!Model) return [`no published schema here for ${object.apiVersion} ${object.kind}`];
  try {
    new Model(object).validate();
    return null;
  } catch (error) {
    return [String(error.message)];
  }
});
process.stdout.write(JSON.stringify(results));
