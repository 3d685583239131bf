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

const assetPaths = {
  downloadSandbox,
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
