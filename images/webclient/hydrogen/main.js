// Outband's Hydrogen: the SDK's built views and view models, mounted the way Hydrogen's own app
// does it (platform → navigation → router → RootViewModel → RootView). The homeserver comes from
// the appliance's config.json (defaultHomeServer), rendered per launch.
import {
  FeatureSet,
  Platform,
  RootViewModel,
  createNavigation,
  createRouter,
} from "hydrogen-view-sdk";
import downloadSandbox from "hydrogen-view-sdk/download-sandbox.html?url";
import olmWasm from "@matrix-org/olm/olm.wasm?url";
import olmJs from "@matrix-org/olm/olm.js?url";
import olmLegacyJs from "@matrix-org/olm/olm_legacy.js?url";
import "hydrogen-view-sdk/theme-element-light.css";

// The service worker is Hydrogen's own (the SDK's lib-build/sw.js, copied to the site's root by the
// build: appliance/webclient.py). Without it the platform has no update service and hydrogen-view-sdk
// 0.3.1 fails every sign-in ("Cannot read properties of null (reading 'updateAuthData')": its
// SessionContainer calls platform.updateService.updateAuthData with no null check).
const assetPaths = {
  downloadSandbox,
  serviceWorker: "sw.js",
  olm: { wasm: olmWasm, legacyBundle: olmLegacyJs, wasmBundle: olmJs },
};

async function main() {
  const platform = new Platform({ container: document.body, assetPaths, configURL: "./config.json" });
  await platform.init();
  const features = await FeatureSet.load(platform.settingsStorage);
  const navigation = createNavigation();
  platform.setNavigation(navigation);
  const urlRouter = createRouter({ navigation, history: platform.history });
  urlRouter.attach();
  const vm = new RootViewModel({ platform, urlRouter, navigation, features });
  await vm.load();
  platform.createAndMountRootView(vm);
}

main();
