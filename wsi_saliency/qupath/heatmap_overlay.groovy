/*
 * wsi_saliency: show a slide's heatmap over it in QuPath (0.5 and later) and import its
 * tiles and tumour regions.
 *
 * 1. Run `wsi-saliency qupath-script OUTPUT_DIR` once after `wsi-saliency run ... -o OUTPUT_DIR`.
 *    It renders `<slide>/qupath/probability.png`, `saliency.png` and `overlay.json` for every
 *    slide and writes this script as OUTPUT_DIR/wsi_saliency_overlay.groovy with OUTPUT_DIR
 *    filled in below.
 * 2. In QuPath open the slide (the same file the pipeline read), then
 *    Automate > Script editor > File > Open... that .groovy file > Run.
 * 3. The overlay is drawn with QuPath's pixel-classification overlays: toggle it with
 *    View > Show pixel classification ('C'). Set SHOW = "saliency" for the signed saliency
 *    (red argues for tumour, blue against, white 0), then run again.
 *
 * Heatmap pixels no tile covered (NaN) are transparent. The image is placed on the level-0
 * pixel rectangle in overlay.json, the rectangle the heatmap covers (pixel (i, j) covers
 * [j * sx, (j + 1) * sx) x [i * sy, (i + 1) * sy) slide pixels).
 */

import javafx.application.Platform
import javax.imageio.ImageIO
import qupath.lib.gui.scripting.QPEx
import qupath.lib.gui.viewer.overlays.BufferedImageOverlay
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO
import qupath.lib.regions.ImageRegion

// ---- settings ----------------------------------------------------------------------------
def OUTPUT_DIR = '@OUTPUT_DIR@'   // the pipeline's output folder (or one slide's folder)
def SHOW = "probability"          // "probability" or "saliency"
def IMPORT_TILES = true           // tiles.geojson(.gz): one detection per tile
def IMPORT_REGIONS = true         // regions.geojson(.gz): tumour regions as annotations
// -------------------------------------------------------------------------------------------

def viewer = QPEx.getCurrentViewer()
def imageData = viewer == null ? null : viewer.getImageData()
if (imageData == null)
    throw new IllegalStateException("Open the slide in QuPath first, then run this script")
if (OUTPUT_DIR.startsWith("@"))
    throw new IllegalArgumentException("Set OUTPUT_DIR at the top of the script to the pipeline's output folder")
if (!(SHOW in ["probability", "saliency"]))
    throw new IllegalArgumentException("SHOW must be \"probability\" or \"saliency\", not \"" + SHOW + "\"")

// The slide's output folder is named after the slide file without its last extension.
def server = imageData.getServer()
def names = [server.getMetadata().getName()]
def entry = QPEx.getProjectEntry()
if (entry != null)
    names << entry.getImageName()
def root = new File(OUTPUT_DIR)
def stems = names.findAll { it != null }.collectMany { String n ->
    [n, n.replaceAll(" - .*", "")]               // "slide.svs - Series 0" -> "slide.svs"
}.collect { String n ->
    n = new File(n).getName()
    int dot = n.lastIndexOf('.')
    dot > 0 ? n.substring(0, dot) : n
}.unique()
def folders = [root] + stems.collect { new File(root, it) }
def folder = folders.find { new File(it, "qupath/overlay.json").isFile() }
if (folder == null)
    throw new FileNotFoundException("No wsi_saliency outputs for " + stems + " in " + root +
            ": run `wsi-saliency qupath-script " + root + "` after the pipeline, or set OUTPUT_DIR")

// ---- the heatmap as an overlay ------------------------------------------------------------
def meta = GsonTools.getInstance().fromJson(new File(folder, "qupath/overlay.json").getText("UTF-8"), Map.class)
def box = meta.get("region_level0") as List
def region = ImageRegion.createInstance(
        Math.round(box[0] as double) as int, Math.round(box[1] as double) as int,
        Math.round(box[2] as double) as int, Math.round(box[3] as double) as int,
        viewer.getZPosition(), viewer.getTPosition())
def img = ImageIO.read(new File(folder, "qupath/" + SHOW + ".png"))
if (img == null)
    throw new IOException("Cannot read " + new File(folder, "qupath/" + SHOW + ".png"))
def overlay = new BufferedImageOverlay(viewer.getOverlayOptions(), region, img)
Platform.runLater {
    viewer.getCustomOverlayLayers().removeIf { it instanceof BufferedImageOverlay }
    viewer.getCustomOverlayLayers().add(overlay)
    viewer.getOverlayOptions().setShowPixelClassification(true)
    viewer.repaintEntireImage()
}
println "wsi_saliency: " + SHOW + " overlay from " + folder + " (" + meta.get(SHOW + "_legend") + ")"

// ---- tiles and regions --------------------------------------------------------------------
def hierarchy = imageData.getHierarchy()
def wanted = []
if (IMPORT_TILES) wanted << "tiles.geojson"
if (IMPORT_REGIONS) wanted << "regions.geojson"
for (name in wanted) {
    def file = [new File(folder, name), new File(folder, name + ".gz")].find { it.isFile() }
    if (file == null) {
        println "wsi_saliency: no " + name + " in " + folder
        continue
    }
    def objects = PathIO.readObjects(file)
    // the ids are stable: objects imported by an earlier run of this script are replaced
    def ids = objects.collect { it.getID() } as Set
    def old = hierarchy.getAllObjects(false).findAll { it.getID() in ids }
    if (!old.isEmpty())
        hierarchy.removeObjects(old, true)
    hierarchy.addObjects(objects)
    println "wsi_saliency: imported " + objects.size() + " objects from " + file.getName()
}
